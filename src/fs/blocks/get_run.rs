//! One ranged GET for a run of consecutive blocks, and what happens when it lags.
//!
//! GETs that share a link do not share it evenly: after a loss one TCP connection can
//! crawl for seconds while the others run at full rate. An ordered reader then waits on
//! that one GET while the rest of its prefetch window is done and the link sits idle. So
//! when a reader waits on a GET, its file's prefetch slots are mostly free and a GET after
//! it has finished first, the blocks it has not reached go out as a new GET, and a second
//! GET races it for the rest of the block it is in. The GET task stays the only writer of
//! its blocks. A takeover waits for an idle link because it closes a connection and opens
//! another in TCP slow start, which costs more than it saves while the link is busy
//! (measured: BENCHMARKS.md, notes item 21).

use super::{BlockCache, BlockKey, BlockSender, ObjectVersion};
use crate::fs::block_buffers::{BlockBuffer, DATA_OFFSET};
use crate::store::{StoreError, StoreResult};
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A GET younger than this does not count as lagging: GETs started together finish in
/// some disorder, and giving up a GET that has just opened its window costs more than it
/// saves.
const LAG_MIN_AGE: Duration = Duration::from_millis(250);

/// The blocks of one GET that its body has not reached yet, in order, and how to ask it
/// to race a second GET for the block it is in.
pub(super) struct GetRest {
    blocks: Mutex<VecDeque<(u64, BlockSender)>>,
    /// The block just past the GET's range.
    end: u64,
    started: Instant,
    race: Notify,
    /// A reader has begun to wait for bytes of the current block, which may be in.
    pub(super) reader_waits: Notify,
    raced: AtomicBool,
}

impl GetRest {
    fn next(&self) -> Option<(u64, BlockSender)> {
        self.blocks.lock().pop_front()
    }

    fn take_all(&self) -> Vec<(u64, BlockSender)> {
        self.blocks.lock().drain(..).collect()
    }
}

/// The bytes of a GET's body going into its blocks, in order, each read straight into
/// its block's buffer.
struct Receiving<'a> {
    cache: &'a BlockCache,
    object: &'a ObjectVersion,
    rest: &'a GetRest,
    current: Option<(u64, BlockSender)>,
    /// The current block's buffer and how many of its bytes are in.
    filling: Option<BlockBuffer>,
    filled: usize,
    /// Where the current block starts in the object.
    block_start: u64,
    end: u64,
}

impl Receiving<'_> {
    fn block_len(&self) -> usize {
        self.cache.block_size.min(self.end - self.block_start) as usize
    }

    /// The current block's index and where its missing bytes start in the object.
    fn position(&self) -> Option<(u64, u64)> {
        let (index, _) = self.current.as_ref()?;
        Some((*index, self.block_start + self.filled as u64))
    }

    /// Room for the current block's missing bytes.
    fn room(&mut self) -> &mut [u8] {
        let (block_len, filled) = (self.block_len(), self.filled);
        let cache = self.cache;
        let buffer = self.filling.get_or_insert_with(|| cache.buffers.take(block_len));
        &mut buffer.as_mut()[DATA_OFFSET + filled..DATA_OFFSET + block_len]
    }

    /// Bytes from elsewhere (a racing GET) that start where the current block's end.
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.current.is_some() {
            let room = self.room();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.filled_more(n);
        }
    }

    /// `n` more bytes of the current block are in its buffer (none: a reader has begun to
    /// wait). A whole block is kept and published; before that, a reader waiting for bytes
    /// that are in gets a copy of them: waking every reader of the block for each read
    /// from the socket costs more CPU than the whole block's copy, and most readers wait
    /// for a whole block.
    fn filled_more(&mut self, n: usize) {
        self.filled += n;
        let block_len = self.block_len();
        let Some((_, tx)) = self.current.as_ref() else { return };
        if self.filled < block_len {
            let (published, wanted) = {
                let p = tx.borrow();
                (p.received, p.wanted.load(Ordering::Acquire))
            };
            if wanted <= self.filled && published < self.filled {
                let buffer = self.filling.as_ref().expect("filled");
                let piece = Bytes::copy_from_slice(&buffer.image(DATA_OFFSET + self.filled)[DATA_OFFSET + published..]);
                let filled = self.filled;
                tx.send_modify(|p| {
                    p.received = filled;
                    p.pieces.push(piece);
                    // The woken readers that need more register again.
                    *p.wanted.get_mut() = usize::MAX;
                });
            }
            return;
        }
        let mut block = self.filling.take().expect("filled");
        block.set_len(block_len);
        let (index, tx) = self.current.take().expect("checked above");
        self.cache.keep(self.object, index, block, tx);
        self.block_start += block_len as u64;
        self.filled = 0;
        self.current = self.rest.next();
    }
}

/// A second GET for the rest of one block (its index), answering where its bytes start.
type Race<'a> = (u64, BoxFuture<'a, StoreResult<(u64, Bytes)>>);

/// What a GET task waits for next.
enum Event {
    /// Bytes read from the body (into the current block, or skipped).
    Read(StoreResult<usize>),
    RaceAsked,
    RaceDone(StoreResult<(u64, Bytes)>),
    ReaderWaits,
}

/// Room for body bytes a won race already put in their blocks.
const SKIP_BUFFER: usize = 64 << 10;

impl BlockCache {
    /// One GET for consecutive blocks; each block is published as soon as its bytes are
    /// in. If it lags, the blocks it has not reached are taken over by a new GET and it
    /// stops after its current block (see the module's comment).
    pub(super) async fn fetch_remote(self: Arc<Self>, object: ObjectVersion, run: Vec<(u64, BlockSender)>) {
        let first = run[0].0;
        let start = first * self.block_size;
        let end = ((first + run.len() as u64) * self.block_size).min(object.size);
        let rest = Arc::new(GetRest {
            end: first + run.len() as u64,
            blocks: Mutex::new(run.into()),
            started: Instant::now(),
            race: Notify::new(),
            reader_waits: Notify::new(),
            raced: AtomicBool::new(false),
        });
        for (_, tx) in rest.blocks.lock().iter() {
            tx.send_if_modified(|p| {
                p.rest = Arc::downgrade(&rest);
                false
            });
        }
        let mut receiving = Receiving {
            cache: &self,
            object: &object,
            rest: &rest,
            current: rest.next(),
            filling: None,
            filled: 0,
            block_start: start,
            end,
        };
        let _room = self.budget.take(end - start).await;
        let result = self.receive(&mut receiving).await;
        tracing::debug!(
            target: "s3vol::fetch",
            "{} bytes {start}..{}: {:.1} ms",
            object.key,
            receiving.block_start,
            rest.started.elapsed().as_secs_f64() * 1000.0
        );
        if let Err(e) = result {
            for (index, tx) in receiving.current.take().into_iter().chain(rest.take_all()) {
                self.publish(&object, index, Err(e.clone()), tx);
            }
        }
    }

    /// Receives the body into the blocks until none is left to fill. Dropping the body
    /// early (its blocks were taken over, or the race won) closes its connection, which
    /// is what a crawling connection deserves.
    async fn receive(&self, r: &mut Receiving<'_>) -> StoreResult<()> {
        let object = r.object;
        let sent = Instant::now();
        let response = self
            .store
            .get_range(&object.key, r.block_start..r.end, Some(&object.etag))
            .await?;
        self.answer_time.answered(sent.elapsed());
        if let (Some(described), Some(sink)) = (&response.described, self.described_sink.get()) {
            sink(described);
        }
        let mut body = response.body;
        // Where the body's next byte belongs: behind the blocks' bytes once a race won.
        let mut body_at = r.block_start;
        let mut skip_buffer = Vec::new();
        // The racing GET and the block it is for.
        let mut race: Option<Race<'_>> = None;
        while let Some((_, at)) = r.position() {
            let skip = at.saturating_sub(body_at);
            let rest = r.rest;
            let event = {
                let into = match skip {
                    0 => r.room(),
                    _ => {
                        skip_buffer.resize(SKIP_BUFFER, 0);
                        let n = skip.min(SKIP_BUFFER as u64) as usize;
                        &mut skip_buffer[..n]
                    }
                };
                tokio::select! {
                    n = body.read_into(into) => Event::Read(n),
                    () = rest.race.notified(), if race.is_none() => Event::RaceAsked,
                    done = Self::finish(&mut race) => Event::RaceDone(done),
                    () = rest.reader_waits.notified() => Event::ReaderWaits,
                }
            };
            match event {
                Event::Read(Ok(0)) => break,
                Event::Read(Ok(n)) => {
                    body_at += n as u64;
                    if skip == 0 {
                        r.filled_more(n);
                    }
                }
                Event::Read(Err(e)) => return Err(e),
                Event::ReaderWaits => r.filled_more(0),
                Event::RaceAsked => {
                    if let Some((index, from)) = r.position() {
                        let to = r.block_start + r.block_len() as u64;
                        race = Some((index, Box::pin(self.get_bytes(object, from..to))));
                    }
                }
                Event::RaceDone(Ok((from, bytes))) => {
                    if let Some((_, at)) = r.position()
                        && at >= from
                        && at - from < bytes.len() as u64
                    {
                        r.put(&bytes[(at - from) as usize..]);
                    }
                    race = None;
                }
                Event::RaceDone(Err(e)) => {
                    tracing::debug!(target: "s3vol::fetch", "{}: racing GET failed: {e}", object.key);
                    race = None;
                }
            }
            // A race for a block this GET has finished meanwhile is no longer needed.
            if race
                .as_ref()
                .is_some_and(|(index, _)| r.position().map(|p| p.0) != Some(*index))
            {
                race = None;
            }
        }
        match r.current {
            Some(_) => Err(StoreError::Transient(format!(
                "{}: body ended at byte {} of {}",
                object.key, r.block_start, r.end
            ))),
            None => Ok(()),
        }
    }

    async fn finish(race: &mut Option<Race<'_>>) -> StoreResult<(u64, Bytes)> {
        match race {
            Some((_, get)) => get.await,
            None => std::future::pending().await,
        }
    }

    /// `range` of the object in one piece, with where it starts.
    async fn get_bytes(&self, object: &ObjectVersion, range: Range<u64>) -> StoreResult<(u64, Bytes)> {
        let bytes = self
            .store
            .get_range(&object.key, range.clone(), Some(&object.etag))
            .await?
            .collect()
            .await?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(StoreError::Transient(format!("{}: short racing GET", object.key)));
        }
        Ok((range.start, bytes))
    }

    /// Called while a reader waits on one of `rest`'s blocks and the link is mostly idle:
    /// if that GET lags (it is not young and the block past its range is cached, so a
    /// later GET finished first), its blocks not yet reached go out as a new GET at once,
    /// and it races a second GET for its current block. The new GET may lag in turn: it
    /// can draw a crawling connection from the pool too.
    pub(super) fn take_over_if_lagging(self: &Arc<Self>, object: &ObjectVersion, rest: &GetRest) {
        let after = BlockKey {
            key: object.key.clone(),
            etag: object.etag.clone(),
            index: rest.end,
        };
        if rest.started.elapsed() < LAG_MIN_AGE || !self.cache.contains_key(&after) {
            return;
        }
        if !rest.raced.swap(true, Ordering::Relaxed) {
            rest.race.notify_one();
        }
        let blocks = rest.take_all();
        if blocks.is_empty() {
            return;
        }
        tracing::debug!(
            "{}: the GET of blocks before {} lags behind a later one; blocks {}.. go as a new GET",
            object.key,
            rest.end,
            blocks[0].0
        );
        let (this, object) = (self.clone(), object.clone());
        tokio::spawn(async move { this.fetch_remote(object, blocks).await });
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::setup;
    use super::super::{GetSlots, Prefetch};
    use std::time::Duration;
    use tokio::time::Instant;

    fn window(end: u64) -> Prefetch {
        Prefetch {
            end,
            gets: Some(GetSlots::new(8)),
            whole: None,
            served: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_in_are_handed_to_a_reader_while_the_rest_of_the_body_is_held() {
        // One GET for blocks 0-2 (of 1000 bytes): block 0 and 300 bytes of block 1 come
        // at once, the rest is held.
        let (store, cache, object, data) = setup(3000).await;
        let gate = store.stall_gets_after(1300);
        let got = cache.read(&object, 0..100, window(3000)).await.unwrap();
        assert_eq!(&got[..], &data[..100]);
        // Nobody waited for block 1's first bytes while they came: its GET kept them, and
        // hands them over to the reader that begins to wait for them now.
        let read = cache.read(&object, 1000..1100, Prefetch::none());
        let got = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("answered while the rest of the body is held")
            .unwrap();
        assert_eq!(&got[..], &data[1000..1100]);
        gate.add_permits(1);
        let all = cache.read(&object, 0..3000, Prefetch::none()).await.unwrap();
        assert_eq!(&all[..], &data[..]);
        assert_eq!(store.requests("get"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_get_gives_its_blocks_to_a_new_get_and_races_for_its_current_one() {
        // Blocks of 1000 bytes, GETs of up to 4: the read's GET (0-3) crawls, the prefetch
        // GETs after it (4-7, 8-11) answer at once.
        let (store, cache, object, data) = setup(12_000).await;
        store.delay_next_get_at(0, Duration::from_secs(60));
        let started = Instant::now();
        let got = cache.read(&object, 0..10, window(12_000)).await.unwrap();
        assert_eq!(&got[..], &data[..10]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            started.elapsed()
        );
        let mut starts = store.get_starts();
        starts.sort();
        // Blocks 1-3 went as a GET of their own, and block 0 was raced by a second GET.
        assert_eq!(starts, [0, 0, 1000, 4000, 8000]);
        let all = cache.read(&object, 0..12_000, Prefetch::none()).await.unwrap();
        assert_eq!(&all[..], &data[..]);
        assert_eq!(store.requests("get"), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_get_is_not_taken_over_while_the_next_one_is_not_done() {
        let (store, cache, object, data) = setup(12_000).await;
        store.delay_next_get_at(0, Duration::from_secs(5));
        store.delay_next_get_at(4000, Duration::from_secs(10));
        let got = cache.read(&object, 0..10, window(12_000)).await.unwrap();
        assert_eq!(&got[..], &data[..10]);
        assert_eq!(store.get_starts(), [0, 4000, 8000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_get_is_not_taken_over_while_the_file_has_most_of_its_gets_in_flight() {
        let (store, cache, object, data) = setup(12_000).await;
        store.delay_next_get_at(0, Duration::from_secs(5));
        let gets = GetSlots::new(8);
        // Five prefetch GETs of the file in flight elsewhere: the link is busy.
        let _busy = gets.slots.clone().acquire_many_owned(5).await.unwrap();
        let prefetch = Prefetch {
            end: 12_000,
            gets: Some(gets.clone()),
            whole: None,
            served: None,
        };
        let got = cache.read(&object, 0..10, prefetch).await.unwrap();
        assert_eq!(&got[..], &data[..10]);
        let mut starts = store.get_starts();
        starts.sort();
        assert_eq!(starts, [0, 4000, 8000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_young_get_is_not_taken_over() {
        let (store, cache, object, data) = setup(12_000).await;
        store.delay_next_get_at(0, super::LAG_MIN_AGE - Duration::from_millis(10));
        let got = cache.read(&object, 0..4000, window(12_000)).await.unwrap();
        assert_eq!(&got[..], &data[..4000]);
        assert_eq!(store.get_starts(), [0, 4000, 8000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_won_race_leaves_the_rest_of_the_body_in_the_right_blocks() {
        let (store, cache, object, data) = setup(4000).await;
        store.delay_next_get_at(0, Duration::from_secs(10));
        let slots = cache.claim(&object, 0..4, 4, &Prefetch::none());
        let Some(super::super::Slot::Pending(first)) = slots.first() else {
            panic!("block 0 is being fetched")
        };
        tokio::task::yield_now().await;
        // The GET is raced for block 0 while it still has blocks 1-3 to fill: its body
        // then arrives a block behind what its blocks hold.
        let rest = first.borrow().rest.upgrade().expect("the GET has started");
        rest.race.notify_one();
        drop(rest);
        let all = cache.read(&object, 0..4000, Prefetch::none()).await.unwrap();
        assert_eq!(&all[..], &data[..]);
        assert_eq!(store.get_starts(), [0, 0]);
    }
}
