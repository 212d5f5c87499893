//! Block buffers: page-aligned, reused, laid out as a block's disk cache file. A fresh
//! buffer costs a page fault per page the first time it is written, each zeroing a page,
//! and glibc hands memory of small blocks' sizes back to the system once freed, so every
//! fresh buffer paid them again: a quarter of the daemon's CPU in an epoch of 100 KiB
//! files read back from the disk cache. A block's buffer comes back here when the last
//! `Bytes` of it is dropped (the memory cache evicted it, the reply was sent), kept by
//! its size in pages, and the next block of that size goes into it, its pages already
//! mapped. The data starts one page in, after room for its disk header, so the disk cache
//! writes and reads a block with O_DIRECT straight from and into its buffer: no copy
//! through the page cache, which was half of the daemon's CPU on a cold read.

use bytes::Bytes;
use parking_lot::Mutex;
use std::alloc::Layout;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

/// The alignment O_DIRECT asks of buffers, offsets and lengths.
pub const ALIGN: usize = 4096;
/// Where a block's data starts in its buffer (and in its disk cache file).
pub const DATA_OFFSET: usize = ALIGN;
/// Blocks smaller than this are shared as a compact copy of their data: their buffer, a
/// header page and a padded data page at least, would be several times their size, and
/// the memory cache weighs what it holds by the data's length.
const COMPACT_BELOW: usize = 64 << 10;

pub fn round_up(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Zeroed, page-aligned memory of a fixed size.
pub struct Aligned {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: `Aligned` owns its allocation alone, like a `Box<[u8]>`.
unsafe impl Send for Aligned {}
// SAFETY: shared access only reads.
unsafe impl Sync for Aligned {}

impl Aligned {
    pub fn new(size: usize) -> Aligned {
        let size = round_up(size.max(1));
        let layout = Layout::from_size_align(size, ALIGN).expect("a valid layout");
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Aligned { ptr, size }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `size` initialised (zeroed at allocation) bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.size) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.size, ALIGN).expect("the layout of new()");
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// One block in its buffer: `len` bytes of data at `DATA_OFFSET`, the page before it for
/// its disk header. Its memory goes back to the pool when dropped.
pub struct BlockBuffer {
    mem: Option<Aligned>,
    len: usize,
    home: Weak<BlockBuffers>,
}

impl BlockBuffer {
    fn mem(&self) -> &Aligned {
        self.mem.as_ref().expect("taken only by drop")
    }

    /// The whole buffer, to fill: the header page, then the data.
    pub fn as_mut(&mut self) -> &mut [u8] {
        self.mem.as_mut().expect("taken only by drop").as_mut_slice()
    }

    /// Room for data after the header page.
    pub fn room(&self) -> usize {
        self.mem().size - DATA_OFFSET
    }

    /// Marks the first `len` bytes after the header page as the block's data, and zeroes
    /// the padding after it up to a whole page: a reused buffer holds another block's
    /// bytes there, which the disk cache's record would otherwise carry.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.room(), "data within the buffer");
        self.len = len;
        self.as_mut()[DATA_OFFSET + len..DATA_OFFSET + round_up(len)].fill(0);
    }

    pub fn data(&self) -> &[u8] {
        &self.mem().as_slice()[DATA_OFFSET..DATA_OFFSET + self.len]
    }

    /// The first `len` bytes of the buffer (as many as it has).
    pub fn image(&self, len: usize) -> &[u8] {
        let all = self.mem().as_slice();
        &all[..len.min(all.len())]
    }

    /// The header page and the data, padded to a whole page: what O_DIRECT writes.
    pub fn file_image(&self) -> &[u8] {
        &self.mem().as_slice()[..DATA_OFFSET + round_up(self.len)]
    }

    /// The header page, to write before the buffer is shared.
    pub fn header_mut(&mut self) -> &mut [u8] {
        &mut self.as_mut()[..DATA_OFFSET]
    }

    /// The data as shared bytes, keeping the buffer alive (and out of the pool) while
    /// any of them lives; a small block's as a copy, so that its buffer can go.
    pub fn share(self: &Arc<Self>) -> Bytes {
        match self.len < COMPACT_BELOW {
            true => Bytes::copy_from_slice(self.data()),
            false => Bytes::from_owner(DataOf(self.clone())),
        }
    }
}

impl Drop for BlockBuffer {
    fn drop(&mut self) {
        if let (Some(mem), Some(home)) = (self.mem.take(), self.home.upgrade()) {
            home.give_back(mem);
        }
    }
}

/// The owner behind a block's `Bytes`: its data.
struct DataOf(Arc<BlockBuffer>);

impl AsRef<[u8]> for DataOf {
    fn as_ref(&self) -> &[u8] {
        self.0.data()
    }
}

pub struct BlockBuffers {
    /// Size of a whole block's buffer: the block, its header page and the padding after it.
    size: usize,
    idle: Mutex<Idle>,
}

/// Buffers kept mapped for the next blocks, by size, within a budget of bytes.
struct Idle {
    sizes: HashMap<usize, SizeClass>,
    bytes: u64,
    budget: u64,
    /// Counts takes, to tell which size was asked for least recently.
    clock: u64,
}

#[derive(Default)]
struct SizeClass {
    buffers: Vec<Aligned>,
    /// When a buffer of this size was last asked for.
    asked: u64,
}

impl Idle {
    fn take(&mut self, size: usize) -> Option<Aligned> {
        self.clock += 1;
        let class = self.sizes.entry(size).or_default();
        class.asked = self.clock;
        let mem = class.buffers.pop()?;
        self.bytes -= mem.size as u64;
        Some(mem)
    }

    /// Keeps `mem`, making room by freeing buffers of the sizes asked for least recently;
    /// returns what is to be freed (outside the lock).
    fn keep(&mut self, mem: Aligned) -> Vec<Aligned> {
        let mut freed = Vec::new();
        while self.bytes + mem.size as u64 > self.budget {
            let oldest = self
                .sizes
                .iter()
                .filter(|(size, class)| **size != mem.size && !class.buffers.is_empty())
                .min_by_key(|(_, class)| class.asked)
                .map(|(size, _)| *size);
            let Some(victim) = oldest.and_then(|size| self.sizes.get_mut(&size)?.buffers.pop()) else {
                // Only buffers of its own size fill the budget: as good as this one.
                freed.push(mem);
                return freed;
            };
            self.bytes -= victim.size as u64;
            freed.push(victim);
        }
        self.bytes += mem.size as u64;
        self.sizes.entry(mem.size).or_default().buffers.push(mem);
        freed
    }
}

impl BlockBuffers {
    /// Buffers for blocks of `block_size` bytes, at most `idle_budget` bytes of them kept
    /// idle.
    pub fn new(block_size: usize, idle_budget: u64) -> Arc<BlockBuffers> {
        let size = DATA_OFFSET + round_up(block_size.max(1));
        Arc::new(BlockBuffers {
            size,
            idle: Mutex::new(Idle {
                sizes: HashMap::new(),
                bytes: 0,
                budget: idle_budget,
                clock: 0,
            }),
        })
    }

    /// A buffer whose data part holds `len` bytes (rounded up to whole pages), an idle one
    /// of that size if there is one: of its own size, so that a short block (a small file,
    /// the end of a file) never holds a whole block's memory. Its bytes are whatever the
    /// last block left: the caller writes what it uses.
    pub fn take(self: &Arc<Self>, len: usize) -> BlockBuffer {
        let wanted = DATA_OFFSET + round_up(len);
        let reused = (wanted <= self.size).then(|| self.idle.lock().take(wanted)).flatten();
        BlockBuffer {
            mem: Some(reused.unwrap_or_else(|| Aligned::new(wanted))),
            len: 0,
            home: Arc::downgrade(self),
        }
    }

    /// The largest block file a buffer holds: the header page and a block.
    pub fn largest_file(&self) -> usize {
        self.size
    }

    fn give_back(&self, mem: Aligned) {
        // A buffer larger than a block's is not kept: no block would use all of it.
        if mem.size > self.size {
            return;
        }
        let freed = self.idle.lock().keep(mem);
        drop(freed);
    }

    /// Buffers idle now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().sizes.values().map(|class| class.buffers.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_bytes_go_and_is_reused() {
        const BLOCK: usize = 1 << 20;
        let pool = BlockBuffers::new(BLOCK, 4 * BLOCK as u64);
        let mut buf = pool.take(BLOCK - 100);
        assert_eq!(buf.as_mut().as_ptr() as usize % ALIGN, 0, "page-aligned");
        buf.as_mut()[DATA_OFFSET..DATA_OFFSET + BLOCK - 100].fill(7);
        buf.set_len(BLOCK - 100);
        assert_eq!(buf.file_image().len(), DATA_OFFSET + BLOCK, "padded to whole pages");
        let address = buf.data().as_ptr();
        let block = Arc::new(buf);
        let bytes = block.share();
        drop(block);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a slice still holds it");
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        assert_eq!(pool.idle(), 1);
        let mut again = pool.take(BLOCK);
        assert_eq!(again.as_mut()[DATA_OFFSET..].as_ptr(), address, "the same memory");
    }

    #[test]
    fn a_short_block_gets_a_buffer_of_its_size_and_is_shared_as_a_copy() {
        let pool = BlockBuffers::new(1 << 20, 4 << 20);
        let mut buf = pool.take(100);
        assert_eq!(buf.room(), ALIGN, "a page for the data, not a whole block's memory");
        buf.as_mut()[DATA_OFFSET..DATA_OFFSET + 100].fill(1);
        buf.set_len(100);
        let block = Arc::new(buf);
        let bytes = block.share();
        assert_eq!(Arc::strong_count(&block), 1, "the bytes are a copy; the buffer can go");
        assert_eq!(&bytes[..], &[1; 100]);
    }

    #[test]
    fn idle_buffers_stay_within_their_budget_and_larger_ones_are_not_kept() {
        let size = (DATA_OFFSET + 8192) as u64;
        let pool = BlockBuffers::new(8192, 2 * size);
        let blocks: Vec<BlockBuffer> = (0..4).map(|_| pool.take(8192)).collect();
        drop(blocks);
        assert_eq!(pool.idle(), 2, "two buffers fit the idle budget");
        let mut large = pool.take(1 << 20);
        assert!(large.room() >= 1 << 20, "a larger request gets a larger buffer");
        large.set_len(1 << 20);
        drop(large);
        assert_eq!(pool.idle(), 2, "and it is not kept");
    }

    #[test]
    fn a_small_blocks_buffer_is_reused_for_a_block_of_its_size_only() {
        let pool = BlockBuffers::new(1 << 20, 4 << 20);
        let mut small = pool.take(100 << 10);
        let address = small.as_mut().as_ptr();
        drop(small);
        assert_eq!(pool.idle(), 1, "kept by its size");
        let mut other = pool.take(50 << 10);
        assert_ne!(other.as_mut().as_ptr(), address, "another size gets its own buffer");
        assert_eq!(other.room(), 52 << 10);
        let mut again = pool.take(100 << 10);
        assert_eq!(again.as_mut().as_ptr(), address, "the same memory for the same size");
        assert_eq!(again.room(), 100 << 10);
    }

    #[test]
    fn a_reused_buffers_padding_carries_nothing_of_the_block_before() {
        let pool = BlockBuffers::new(1 << 20, 4 << 20);
        let mut first = pool.take(8192);
        first.as_mut().fill(0xff);
        first.set_len(8192);
        drop(first);
        let mut next = pool.take(5000);
        assert_eq!(next.room(), 8192, "the same size: the buffer before");
        next.as_mut()[DATA_OFFSET..DATA_OFFSET + 5000].fill(1);
        next.set_len(5000);
        let image = next.file_image();
        assert_eq!(image.len(), DATA_OFFSET + 8192);
        assert!(image[DATA_OFFSET + 5000..].iter().all(|b| *b == 0), "padding zeroed");
    }

    #[test]
    fn a_full_pool_gives_up_the_size_asked_for_least_recently() {
        let page = DATA_OFFSET as u64;
        let pool = BlockBuffers::new(3 * 4096, 7 * page);
        // Buffers of 2, 3 and 4 pages (a header page and 1, 2 or 3 of data).
        let (mut two, three) = (pool.take(4096), pool.take(8192));
        let address = two.as_mut().as_ptr();
        drop((two, three));
        drop(pool.take(4096));
        assert_eq!(pool.idle(), 2, "5 pages idle");
        drop(pool.take(3 * 4096));
        assert_eq!(pool.idle(), 2, "the 4-page buffer took the room of the 3-page one");
        let three_again = pool.take(8192);
        assert_eq!(pool.idle(), 2, "no 3-page buffer was idle");
        let mut two_again = pool.take(4096);
        assert_eq!(
            two_again.as_mut().as_ptr(),
            address,
            "the 2-page size, asked for later, kept"
        );
        drop((three_again, two_again));
    }
}
