//! Blocks of a file fetched whole handed straight to the kernel's page cache.
//!
//! A file read at random (a model loader taking its tensors in a shuffled order) is
//! fetched whole in the background (`blocks/whole_fetch.rs`). Kept in the daemon, each
//! block still cost the reader a page fault, a FUSE read and its answer when the reader
//! came to it, and it held the daemon's memory until then, which paced the fetch to the
//! reader. Handed to the kernel as it arrives (FUSE's store notice), the reader finds it in
//! the page cache: no request, no wait, and the daemon lets the block go at once.
//!
//! The page cache must never get bytes older than what it holds or should hold. A block
//! goes in only while the file has no local data (no writer, no truncate) and the kernel
//! caches the version fetched (`kernel_cache_etag`), checked after the push is counted
//! as under way. Whoever changes either (an open for writing, a truncate, an open of a
//! newer version) waits, after the change, until the inode's pushes under way at that
//! moment are done: a push either saw the change and stayed out, or landed before the
//! kernel was told (the open's answer, which then drops or overwrites those pages).

use super::Fs;
use super::blocks::ObjectVersion;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, Semaphore};

/// Puts `data` at `offset` of inode `ino` into the kernel's page cache; false if the
/// kernel refused it. Set by the FUSE adapter at mount; blocking.
pub type PagesToKernel = Arc<dyn Fn(u64, u64, &[u8]) -> bool + Send + Sync>;

/// Blocks handed over and not yet in the page cache, at most (their memory is the
/// fetches', held a little longer; 64 MiB of 1 MiB blocks).
const PUSHES_IN_FLIGHT: usize = 64;

/// Pushes under way, by inode.
pub struct PagePushes {
    state: Mutex<UnderWay>,
    /// Room for blocks on their way (`PUSHES_IN_FLIGHT`).
    room: Arc<Semaphore>,
    /// A push ended (all waiters look again at their inode).
    ended: Notify,
    pub pushed_bytes: AtomicU64,
}

impl Default for PagePushes {
    fn default() -> Self {
        PagePushes {
            state: Mutex::default(),
            room: Arc::new(Semaphore::new(PUSHES_IN_FLIGHT)),
            ended: Notify::new(),
            pushed_bytes: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct UnderWay {
    /// Each push's turn, in the order they began.
    next_turn: u64,
    /// The turns of the pushes under way, by inode.
    by_inode: HashMap<u64, Vec<u64>>,
}

/// One push under way; counted until dropped.
pub struct PushUnderWay<'a> {
    pushes: &'a PagePushes,
    ino: u64,
    turn: u64,
}

impl PagePushes {
    pub fn begin(&self, ino: u64) -> PushUnderWay<'_> {
        let mut state = self.state.lock();
        let turn = state.next_turn;
        state.next_turn += 1;
        state.by_inode.entry(ino).or_default().push(turn);
        PushUnderWay {
            pushes: self,
            ino,
            turn,
        }
    }

    /// Whether a push of `ino` that began before `turn` is under way.
    fn under_way_before(&self, ino: u64, turn: u64) -> bool {
        let state = self.state.lock();
        state
            .by_inode
            .get(&ino)
            .is_some_and(|turns| turns.iter().any(|t| *t < turn))
    }

    /// Returns once the pushes of `ino` under way now have ended (not those that begin
    /// later: they see the change the caller made and stay out, and a fetch that keeps
    /// pushing cannot hold the caller back).
    pub async fn wait_idle(&self, ino: u64) {
        let turn = self.state.lock().next_turn;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the look: an end between the two still wakes this one.
            ended.as_mut().enable();
            if !self.under_way_before(ino, turn) {
                return;
            }
            ended.await;
        }
    }
}

impl Drop for PushUnderWay<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.pushes.state.lock();
            if let Some(turns) = state.by_inode.get_mut(&self.ino) {
                turns.retain(|t| *t != self.turn);
                if turns.is_empty() {
                    state.by_inode.remove(&self.ino);
                }
            }
        }
        self.pushes.ended.notify_waiters();
    }
}

impl Fs {
    /// Where the whole fetch of `object`, open as inode `ino`, hands its blocks: `None`
    /// without a kernel to hand them to (the core's own tests).
    pub(super) fn block_sink(&self, ino: u64, object: &ObjectVersion) -> Option<super::blocks::BlockSink> {
        let to_kernel = self.kernel.pages.get()?.clone();
        let me = self.me.clone();
        let (object, block_size) = (object.clone(), self.blocks.block_size);
        Some(Arc::new(move |index: u64, data: Bytes| {
            let fs = me.upgrade()?;
            let to_kernel = to_kernel.clone();
            let object = object.clone();
            let room = fs.page_pushes.room.clone();
            Some(Box::pin(async move {
                let Ok(held) = room.acquire_owned().await else { return };
                // The write to /dev/fuse may wait for a page lock held by a read this
                // daemon is answering: off the runtime's threads.
                tokio::task::spawn_blocking(move || {
                    let _held = held;
                    let _push = fs.page_pushes.begin(ino);
                    if fs.kernel_caches(ino, &object) && to_kernel(ino, index * block_size, &data) {
                        let len = data.len() as u64;
                        fs.page_pushes.pushed_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                });
            }) as futures::future::BoxFuture<'static, ()>)
        }))
    }

    /// Whether the kernel's page cache of `ino` stands for `object` as it is in the bucket:
    /// no local data, the version the kernel caches, its size.
    fn kernel_caches(&self, ino: u64, object: &ObjectVersion) -> bool {
        if self.unmounted.load(Ordering::Relaxed) || self.handles.has_data(ino) {
            return false;
        }
        let tree = self.tree();
        tree.get(ino).is_some_and(|n| {
            !n.local && n.attr.size == object.size && n.kernel_cache_etag.as_deref() == Some(&*object.etag)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_waits_for_the_pushes_under_way_and_only_for_its_inode() {
        let pushes = Arc::new(PagePushes::default());
        let push = pushes.begin(7);
        let other = pushes.begin(8);
        // Nothing under way for inode 9: no wait.
        tokio::time::timeout(Duration::from_secs(1), pushes.wait_idle(9))
            .await
            .unwrap();
        let waiter = {
            let pushes = pushes.clone();
            tokio::spawn(async move { pushes.wait_idle(7).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "returned while a push was under way");
        drop(push);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        // Inode 8's push is still counted.
        assert!(pushes.under_way_before(8, u64::MAX));
        drop(other);
        assert!(!pushes.under_way_before(8, u64::MAX));
    }

    #[tokio::test]
    async fn a_push_that_began_after_the_wait_does_not_hold_it() {
        let pushes = Arc::new(PagePushes::default());
        let early = pushes.begin(4);
        let waiter = {
            let pushes = pushes.clone();
            tokio::spawn(async move { pushes.wait_idle(4).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let late = pushes.begin(4);
        drop(early);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        drop(late);
    }

    #[tokio::test]
    async fn two_pushes_of_one_inode_both_end_before_the_wait_does() {
        let pushes = Arc::new(PagePushes::default());
        let (a, b) = (pushes.begin(3), pushes.begin(3));
        let waiter = {
            let pushes = pushes.clone();
            tokio::spawn(async move { pushes.wait_idle(3).await })
        };
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "returned with one push of two still under way");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
