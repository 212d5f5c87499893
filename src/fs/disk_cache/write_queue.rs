//! Records waiting for a segment, and the few writers that append them in batches. An
//! O_DIRECT write costs about as much CPU to submit, wait for and complete as a 100 KiB
//! record costs to move (in a cold epoch over files of 100 KiB, one write per record
//! was 12 % of the daemon's CPU, two thirds of it per call): records that wait together
//! go to their segment in one `pwritev`.

use super::BlockBuffer;
use super::segments::Name;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Writers at most. One writes while it keeps up; another starts for each
/// `BACKLOG_PER_WRITER` bytes waiting (the records of files of 1 MB, arriving at 1 GB/s,
/// are written about as fast as they come by one writer each).
const WRITERS: usize = 16;
const BACKLOG_PER_WRITER: usize = 1 << 20;
/// A writer started on an idle queue waits this long for company before its first
/// batch: records arrive a few hundred microseconds apart in a cold epoch over small
/// files, about as long as one write takes, so that without it most batches were of one
/// record (1.4 on average). A record waits in memory meanwhile, readable as before.
pub(super) const GATHER: Duration = Duration::from_millis(1);
/// A batch stops at this many bytes or records: small records go together, a block of
/// 1 MiB goes alone (larger writes took longer per byte on this machine's disk).
const BATCH_BYTES: usize = 1 << 20;
const BATCH_RECORDS: usize = 32;

/// One record on its way to a segment, holding its share of the pending budget.
pub(super) struct QueuedRecord {
    pub name: Name,
    /// Its header page and data, written as they are.
    pub block: Arc<BlockBuffer>,
    pub _permit: OwnedSemaphorePermit,
}

impl QueuedRecord {
    fn bytes(&self) -> usize {
        self.block.file_image().len()
    }
}

/// Whether a record queued needs a writer started.
#[derive(Debug, PartialEq)]
pub(super) enum Start {
    No,
    /// The first after a pause: it waits `GATHER` for company.
    Idle,
    /// Another beside those that fall behind: it starts at once.
    Behind,
}

#[derive(Default)]
pub(super) struct WriteQueue {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    waiting: VecDeque<QueuedRecord>,
    waiting_bytes: usize,
    writers: usize,
}

impl WriteQueue {
    /// Queues `record`; says whether the caller is to start a writer: none runs, or those
    /// that run fall behind.
    pub fn push(&self, record: QueuedRecord) -> Start {
        let mut inner = self.inner.lock();
        inner.waiting_bytes += record.bytes();
        inner.waiting.push_back(record);
        let start = if inner.writers == 0 {
            Start::Idle
        } else if inner.writers < WRITERS && inner.waiting_bytes > inner.writers * BACKLOG_PER_WRITER {
            Start::Behind
        } else {
            return Start::No;
        };
        inner.writers += 1;
        start
    }

    /// A writer's next batch: the oldest records, within the batch's bounds (at least
    /// one). `None` when nothing waits, and the writer asking stops: counted out under the
    /// same lock that `push` counts under, so that a record queued meanwhile always finds
    /// a writer.
    pub fn next_batch(&self) -> Option<Vec<QueuedRecord>> {
        let mut inner = self.inner.lock();
        let Some(first) = inner.waiting.pop_front() else {
            inner.writers = inner.writers.saturating_sub(1);
            return None;
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH_RECORDS
            && let Some(next) = inner.waiting.front()
            && bytes + next.bytes() <= BATCH_BYTES
        {
            bytes += next.bytes();
            batch.extend(inner.waiting.pop_front());
        }
        inner.waiting_bytes -= bytes;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::segments::name_of;
    use super::*;
    use crate::fs::block_buffers::BlockBuffers;
    use tokio::sync::Semaphore;

    fn record(len: usize) -> QueuedRecord {
        let buffers = BlockBuffers::new(4096, 1 << 20);
        let mut block = buffers.take(len);
        block.set_len(len);
        QueuedRecord {
            name: name_of(b"any"),
            block: Arc::new(block),
            _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
        }
    }

    #[test]
    fn one_writer_runs_until_it_falls_behind() {
        let queue = WriteQueue::default();
        assert_eq!(queue.push(record(100 << 10)), Start::Idle, "the first starts one");
        assert_eq!(queue.push(record(100 << 10)), Start::No, "it takes the second");
        // Past a writer's backlog, another starts, at once.
        assert_eq!(queue.push(record(1 << 20)), Start::Behind);
        assert_eq!(queue.push(record(4096)), Start::No);
    }

    #[test]
    fn a_batch_stops_at_its_bounds() {
        let queue = WriteQueue::default();
        for _ in 0..BATCH_RECORDS + 5 {
            queue.push(record(4096));
        }
        assert_eq!(queue.next_batch().unwrap().len(), BATCH_RECORDS);
        assert_eq!(queue.next_batch().unwrap().len(), 5);
        // 1 MiB in all, each record's header page counted.
        for _ in 0..10 {
            queue.push(record(250 << 10));
        }
        assert_eq!(queue.next_batch().unwrap().len(), 4);
        queue.push(record(1 << 20));
        let sizes: Vec<usize> = std::iter::from_fn(|| queue.next_batch().map(|b| b.len())).collect();
        assert_eq!(sizes, [4, 2, 1], "a block of 1 MiB goes alone");
    }

    #[test]
    fn the_last_writer_out_is_replaced_by_the_next_record() {
        let queue = WriteQueue::default();
        assert_eq!(queue.push(record(4096)), Start::Idle);
        assert_eq!(queue.next_batch().unwrap().len(), 1);
        assert!(queue.next_batch().is_none(), "nothing waits: the writer stops");
        assert_eq!(queue.push(record(4096)), Start::Idle, "so the next record starts one");
    }
}
