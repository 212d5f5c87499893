//! Files opened after their metadata TTL, revalidated together: the first open in a
//! directory lists it again (one LIST for up to 1,000 entries, which renews every entry it
//! shows unchanged) and the opens that come meanwhile wait for that listing, instead of a
//! HEAD each. A DataLoader's second epoch that started within the TTL of the first epoch's
//! listings crossed it midway and sent a HEAD per file opened after it: 2.1-2.7 s, against
//! 0.56-0.61 s when the epoch happened to list the directories again first. In a directory
//! of more pages, the opens join the whole listing that its lookups run
//! (`relist_large.rs`). A file the new listing does not show unchanged gets its HEAD.
//!
//! Before that: an open in a directory whose listing is in the last quarter of its TTL (or
//! past it; the last half for a directory of more pages) lists the directory again in the
//! background, and the opens go on. Files a DataLoader read early in a long epoch were
//! past their TTL when the next epoch began, and that epoch's opens waited for a listing
//! of each directory (over a 40 ms link, second epochs 0.97-1.65 s; 0.60-0.75 s with the
//! listings renewed ahead).

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
/// An open renews its directory's listing ahead in this last part of the listing's TTL.
const RENEW_IN_LAST: u32 = 4;
/// The same for a directory of more than one page.
const RENEW_LARGE_IN_LAST: u32 = 2;

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
    /// listing (one page, or a large directory's whole listing as its lookups run it),
    /// else (or if the listing did not renew it) one HEAD.
    pub(super) async fn revalidate_file(self: &Arc<Self>, ino: u64, key: &str) -> FsResult<()> {
        let fresh = || {
            self.tree()
                .get(ino)
                .is_some_and(|n| n.fresh_until > Instant::now() && n.etag.is_some())
        };
        match self.listed_dir_of(ino, |_| true) {
            Some((dir, dir_key, false)) => {
                let mut waiter = self.relist_once(dir, &dir_key);
                let _ = waiter.wait_for(|done| *done).await;
                if fresh() {
                    return Ok(());
                }
            }
            Some((dir, dir_key, true)) => {
                let name = key.strip_prefix(dir_key.as_str()).unwrap_or(key);
                if self.relisted_for(dir, &dir_key, name).await && fresh() {
                    return Ok(());
                }
            }
            None => {}
        }
        self.refresh_file(ino, key).await.map(|_| ())
    }

    /// A file with fresh attributes is being opened: if its directory's listing is near
    /// the end of its TTL, it is listed again in the background (not waited for). A large
    /// directory starts in the last half: when its listing took a round trip per page,
    /// over a link full of a DataLoader's GETs, its last pages arrived after their names'
    /// TTL from the last quarter; listed in segments at once (list_segments.rs) it takes
    /// one round trip, but a dozen LISTs still queue behind those GETs.
    pub(super) fn renew_listing_ahead(self: &Arc<Self>, ino: u64) {
        let now = Instant::now();
        let ttl = self.config.metadata_ttl;
        let aging = |d: &super::tree::Node| {
            let ahead = if d.large {
                ttl / RENEW_LARGE_IN_LAST
            } else {
                ttl / RENEW_IN_LAST
            };
            d.listed_until.is_some_and(|t| t < now + ahead)
        };
        match self.listed_dir_of(ino, aging) {
            Some((dir, dir_key, false)) => drop(self.relist_once(dir, &dir_key)),
            Some((dir, dir_key, true)) => self.renew_large_ahead(dir, &dir_key),
            None => {}
        }
    }

    /// The bucket directory of `ino` if `wanted`, and whether it is large (more than one
    /// LIST page).
    fn listed_dir_of(&self, ino: u64, wanted: impl Fn(&super::tree::Node) -> bool) -> Option<(u64, String, bool)> {
        let tree = self.tree();
        let parent = tree.get(ino)?.parent;
        let d = tree.get(parent)?;
        (d.attr.kind == Kind::Dir && !d.local && wanted(d)).then(|| (parent, d.key.clone(), d.large))
    }

    /// Lists `dir` again, or joins such a listing under way: the receiver turns true when
    /// it is done. Errors are left to the HEAD that follows (and to the directory's own
    /// readdir).
    fn relist_once(self: &Arc<Self>, dir: u64, dir_key: &str) -> watch::Receiver<bool> {
        let (started, waiter) = {
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
                    .list_then_load_metadata(dir, &dir_key, &this.revalidation.heads, done, || true)
                    .await
                {
                    tracing::debug!("listing {dir_key:?} again to revalidate its files: {e}");
                }
            });
        }
        waiter
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

#[cfg(test)]
mod tests {
    use crate::fs::listed_dir_tests::listed;
    use std::time::Duration;

    /// An open near the end of its directory's listing TTL lists the directory again in
    /// the background, so that an open after that TTL finds its file fresh (no LIST or
    /// HEAD waited for).
    #[tokio::test]
    async fn an_open_late_in_the_listings_ttl_renews_it_ahead() {
        let ttl = Duration::from_secs(2);
        let d = listed(10, ttl).await;
        let (lists, heads) = (d.store.requests("list"), d.store.requests("head"));
        d.open("f00000").await;
        assert_eq!(d.store.requests("list"), lists, "a fresh listing was listed again");

        // In the TTL's last quarter: listed again, not waited for.
        tokio::time::sleep_until((d.listed_at + ttl * 4 / 5).into()).await;
        d.open("f00001").await;
        assert_eq!(
            d.lists_reach(lists + 1).await,
            lists + 1,
            "the listing was not renewed ahead"
        );

        // Past the first listing's TTL, within the second's.
        tokio::time::sleep_until((d.listed_at + ttl * 6 / 5).into()).await;
        d.open("f00002").await;
        assert_eq!(d.store.requests("list"), lists + 1, "an open waited for a listing");
        assert_eq!(d.store.requests("head"), heads, "an open waited for a HEAD");
    }

    /// The same in a directory of more than one LIST page, from the last half of the TTL:
    /// renewed ahead by one whole listing (a LIST per page), after which a name of its
    /// last page is fresh past the first listing's TTL. Before, an open there listed the
    /// first page again (renewing none of the rest) at every open in the TTL's last
    /// quarter.
    #[tokio::test]
    async fn a_large_directory_is_renewed_ahead_whole() {
        let ttl = Duration::from_secs(4);
        let d = listed(1_200, ttl).await;
        let (lists, heads) = (d.store.requests("list"), d.store.requests("head"));
        tokio::time::sleep_until((d.listed_at + ttl * 2 / 5).into()).await;
        d.open("f00000").await;
        assert_eq!(
            d.lists_reach(lists + 1).await,
            lists,
            "renewed before the TTL's last half"
        );

        tokio::time::sleep_until((d.listed_at + ttl * 3 / 5).into()).await;
        d.open("f00001").await;
        d.open("f00002").await;
        assert_eq!(
            d.lists_reach(lists + 2).await,
            lists + 2,
            "not renewed ahead by one whole listing"
        );

        tokio::time::sleep_until((d.listed_at + ttl * 6 / 5).into()).await;
        assert_eq!(d.fs.lookup(d.dir, "f01100").await.expect("lookup").ino, d.ino("f01100"));
        d.open("f01100").await;
        assert_eq!(
            d.store.requests("list"),
            lists + 2,
            "a lookup or open waited for a listing"
        );
        assert_eq!(d.store.requests("head"), heads, "an open waited for a HEAD");
    }

    /// Opens after the TTL in a large directory (a DataLoader's files, whose names the
    /// kernel still holds) join the whole listing that its lookups would run: as many
    /// HEADs as it has pages, then one listing for the rest. Before, a HEAD each.
    #[tokio::test]
    async fn opens_past_the_ttl_in_a_large_directory_share_its_whole_listing() {
        let ttl = Duration::from_millis(500);
        let d = listed(1_200, ttl).await;
        let (lists, heads) = (d.store.requests("list"), d.store.requests("head"));
        tokio::time::sleep_until((d.listed_at + ttl * 3 / 2).into()).await;
        for i in [1, 300, 600, 900, 1100, 1199] {
            d.open(&format!("f{i:05}")).await;
        }
        assert_eq!(d.store.requests("head"), heads + 2, "a HEAD per page, then the listing");
        assert_eq!(d.store.requests("list"), lists + 2, "one whole listing");
    }
}
