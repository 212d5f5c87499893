//! Files opened after their metadata TTL, revalidated together: the first open in a
//! directory lists it again (one LIST for up to 1,000 entries, which renews every entry it
//! shows unchanged) and the opens that come meanwhile wait for that listing, instead of a
//! HEAD each. A DataLoader's second epoch that started within the TTL of the first epoch's
//! listings crossed it midway and sent a HEAD per file opened after it: 2.1-2.7 s, against
//! 0.56-0.61 s when the epoch happened to list the directories again first. A directory
//! larger than one page, or a file the new listing does not show unchanged, gets its HEAD.

use super::attr::Kind;
use super::{Fs, FsResult};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Directories being listed again for the opens of their files, with who waits on them.
pub(super) struct Revalidation {
    listing: Mutex<HashMap<u64, watch::Receiver<bool>>>,
    /// HEADs of entries that changed, after such a listing (background work's share).
    heads: tokio::sync::Semaphore,
}

/// HEADs in flight at once for entries a revalidating listing found changed.
const HEADS: usize = 16;

impl Revalidation {
    pub(super) fn new() -> Revalidation {
        Revalidation {
            listing: Mutex::default(),
            heads: tokio::sync::Semaphore::new(HEADS),
        }
    }
}

impl Fs {
    /// Makes a file's cached attributes current before an open: through its directory's
    /// listing where that is one page, else (or if the listing did not renew it) one HEAD.
    pub(super) async fn revalidate_file(self: &Arc<Self>, ino: u64, key: &str) -> FsResult<()> {
        let dir = {
            let tree = self.tree();
            let parent = tree.get(ino).map(|n| n.parent);
            parent
                .and_then(|p| tree.get(p).map(|d| (p, d)))
                .filter(|(_, d)| d.attr.kind == Kind::Dir && !d.local && !d.large)
                .map(|(p, d)| (p, d.key.clone()))
        };
        if let Some((dir, dir_key)) = dir {
            self.relist_once(dir, &dir_key).await;
            let fresh = self
                .tree()
                .get(ino)
                .is_some_and(|n| n.fresh_until > Instant::now() && n.etag.is_some());
            if fresh {
                return Ok(());
            }
        }
        self.refresh_file(ino, key).await.map(|_| ())
    }

    /// Lists `dir` again, or waits for such a listing under way. Errors are left to the
    /// HEAD that follows (and to the directory's own readdir).
    async fn relist_once(self: &Arc<Self>, dir: u64, dir_key: &str) {
        let (started, mut waiter) = {
            let mut listing = self.revalidation.listing.lock();
            match listing.get(&dir) {
                Some(w) => (None, w.clone()),
                None => {
                    let (tx, rx) = watch::channel(false);
                    listing.insert(dir, rx.clone());
                    (Some(tx), rx)
                }
            }
        };
        if let Some(tx) = started {
            let (this, dir_key) = (self.clone(), dir_key.to_string());
            // Its own task: the listing finishes (and its waiters go on) even if this open
            // is interrupted.
            tokio::spawn(async move {
                let listed = Listed {
                    fs: this.clone(),
                    dir,
                    tx,
                };
                let done = move || drop(listed);
                if let Err(e) = this
                    .list_then_load_metadata(dir, &dir_key, &this.revalidation.heads, done)
                    .await
                {
                    tracing::debug!("listing {dir_key:?} again to revalidate its files: {e}");
                }
            });
        }
        let _ = waiter.wait_for(|done| *done).await;
    }
}

/// The end of a revalidating listing, however it ends (a panic included): the directory
/// can be listed again, and its waiters go on.
struct Listed {
    fs: Arc<Fs>,
    dir: u64,
    tx: watch::Sender<bool>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.fs.revalidation.listing.lock().remove(&self.dir);
        self.tx.send_replace(true);
    }
}
