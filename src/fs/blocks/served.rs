//! Which blocks of a file its reads have handed out whole. Those bytes are then in the
//! kernel's page cache for every reader of the file, and the disk cache keeps a copy: the
//! memory cache lets such a block go (`BlockCache::read`), and is better spent on blocks
//! fetched ahead and on those read in part (a tensor's last block is the next one's
//! first). Kept, they filled the memory cache on every large read: a cold 1 GiB read
//! took 512 MiB of fresh memory, 137,000 page faults, a quarter of the daemon's CPU
//! (with `--memory-limit 256MiB`, 39,000 faults and 0.43 s of CPU less). Let go, their
//! buffers come back for the blocks that follow.
//!
//! The kernel's read-ahead hands out a file's blocks somewhat out of order: a block ahead
//! may be served, and let go, before a read behind it claims its prefetch window. So a
//! window stops at a block served whole in the last `LATE_READ`: brought back, 80-130
//! blocks of a cold 1 GiB read came from the disk cache again, and some from the network
//! (those still on their way to the disk). A block served longer ago is prefetched again
//! (a file read again once the page cache let it go).

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Blocks read in part tracked at once; past it the counts start over (a few thousand
/// tensors' edges; a block whose count is lost stays in memory until evicted).
const PARTS_MAX: usize = 4096;
/// Blocks served whole remembered at most: more than a prefetch window's (128 MiB of
/// 1 MiB blocks).
const RECENT_MAX: usize = 1024;
/// How long after a block was served a read behind it may still come: the kernel's
/// read-ahead requests of one window, answered out of order on a busy machine.
const LATE_READ: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct ServedBlocks {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Bytes handed out so far of each block read in part.
    parts: HashMap<u64, u64>,
    /// When each block was last served whole, within `LATE_READ`.
    lately: HashMap<u64, Instant>,
    /// The same, oldest first, to let them lapse (an entry whose block was served again,
    /// or read again, since lapses without effect).
    order: VecDeque<(u64, Instant)>,
}

impl Counts {
    fn remember(&mut self, index: u64, now: Instant) {
        self.lately.insert(index, now);
        self.order.push_back((index, now));
        while let Some(&(oldest, at)) = self.order.front() {
            if self.order.len() <= RECENT_MAX && now.saturating_duration_since(at) < LATE_READ {
                break;
            }
            self.order.pop_front();
            if self.lately.get(&oldest) == Some(&at) {
                self.lately.remove(&oldest);
            }
        }
    }

    fn lately(&self, index: u64, now: Instant) -> bool {
        self.lately
            .get(&index)
            .is_some_and(|at| now.saturating_duration_since(*at) < LATE_READ)
    }
}

impl ServedBlocks {
    /// A read handed `bytes` of a file of `size` bytes to the kernel; returns the blocks
    /// every byte of which has now been handed out (since they last were).
    pub fn served(&self, bytes: Range<u64>, block_size: u64, size: u64) -> Vec<u64> {
        let mut whole = Vec::new();
        let block_size = block_size.max(1);
        let mut counts = self.counts.lock();
        let mut at = bytes.start;
        while at < bytes.end.min(size) {
            let index = at / block_size;
            let block_start = index * block_size;
            let block_end = block_start.saturating_add(block_size).min(size);
            let upto = block_end.min(bytes.end);
            let len = block_end - block_start;
            // Read again (the page cache let it go): counted afresh, and prefetched.
            counts.lately.remove(&index);
            let now = counts.parts.get(&index).copied().unwrap_or(0).saturating_add(upto - at);
            if now >= len {
                counts.parts.remove(&index);
                counts.remember(index, Instant::now());
                whole.push(index);
            } else {
                if counts.parts.len() >= PARTS_MAX && !counts.parts.contains_key(&index) {
                    counts.parts.clear();
                }
                counts.parts.insert(index, now);
            }
            at = upto;
        }
        whole
    }

    /// Whether a read served block `index` whole in the last `LATE_READ` (and has not
    /// read it again since): a prefetch window stops there.
    pub fn served_lately(&self, index: u64) -> bool {
        self.counts.lock().lately(index, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_counts_as_served_once_all_its_bytes_were_handed_out() {
        let served = ServedBlocks::default();
        // Blocks of 10 bytes, 25 in all: the last block has 5.
        assert_eq!(served.served(0..4, 10, 25), Vec::<u64>::new());
        assert_eq!(served.served(4..14, 10, 25), [0]);
        assert_eq!(served.served(14..30, 10, 25), [1, 2]);
        // Read again (the page cache dropped them, memory had them back): let go again.
        assert_eq!(served.served(0..25, 10, 25), [0, 1, 2]);
        assert!(
            served.counts.lock().parts.is_empty(),
            "no count kept of blocks served whole"
        );
    }

    #[test]
    fn reads_beyond_the_file_count_nothing() {
        let served = ServedBlocks::default();
        assert_eq!(served.served(0..100, 1, 2), [0, 1]);
        assert_eq!(served.served(5..10, 1, 2), Vec::<u64>::new());
        // A size near the end of the offsets (a hostile listing) overflows nothing.
        assert_eq!(
            served.served(u64::MAX - 10..u64::MAX, 1 << 20, u64::MAX),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn the_blocks_read_in_part_are_bounded() {
        let served = ServedBlocks::default();
        for index in 0..(PARTS_MAX as u64 + 10) {
            served.served(index * 10..index * 10 + 1, 10, u64::MAX);
        }
        let counts = served.counts.lock();
        assert!(counts.parts.len() <= PARTS_MAX);
        assert!(counts.order.len() <= RECENT_MAX && counts.lately.len() <= RECENT_MAX);
    }

    #[test]
    fn a_block_served_ahead_is_served_lately_until_it_is_read_again_or_a_while_passed() {
        let served = ServedBlocks::default();
        // Read-ahead served block 5 before block 2.
        assert_eq!(served.served(50..60, 10, 1000), [5]);
        assert!(served.served_lately(5));
        assert!(!served.served_lately(2) && !served.served_lately(6));
        let later = Instant::now() + LATE_READ;
        assert!(!served.counts.lock().lately(5, later), "a late read comes sooner");
        // Read again, in part: prefetched again.
        assert_eq!(served.served(50..52, 10, 1000), Vec::<u64>::new());
        assert!(!served.served_lately(5));
    }

    #[test]
    fn the_blocks_served_whole_are_bounded() {
        let served = ServedBlocks::default();
        served.served(0..(RECENT_MAX as u64 + 10) * 10, 10, u64::MAX);
        let counts = served.counts.lock();
        assert_eq!(counts.order.len(), RECENT_MAX);
        assert_eq!(counts.lately.len(), RECENT_MAX);
        assert_eq!(counts.order.front().map(|o| o.0), Some(10), "the oldest went first");
    }
}
