//! The persisted metadata of listed entries. A LIST carries no user metadata: mode, owner,
//! mtime and the symlink type of an entry live in its object's `x-amz-meta-*` headers (a
//! directory's in its marker). So the entries of each LIST page whose metadata the mount
//! has not read are HEADed as soon as the page arrives, many at once (bounded across the
//! mount), and readdir and lookup answer once they are in: a symlink never shows as a
//! regular file, an x bit is never lost. An entry read once keeps its metadata while its
//! ETag stays the same, so listing it again after the TTL costs no HEAD. Where the provider
//! keeps no user metadata there is nothing to fetch.

use super::attr::Kind;
use super::heads_in_flight::{self, Turn};
use super::tree::Tree;
use super::{Fs, listing};
use crate::store::StoreError;
use crate::store::{ListPage, ObjectMeta, StoreResult};
use futures::StreamExt;
use std::sync::atomic::Ordering;

/// HEADs of listed entries in flight at once across the mount (within `--max-requests`).
/// On bench/run's 40 ms link, `ls -l` of 10,000 entries took 7.0 s with 64, 4.0 s with
/// 128 and 2.5 s with 256 (the listing alone 0.9 s): the HEADs are bound by round trips.
pub(super) const CONCURRENT_HEADS: usize = 256;

/// Background HEAD results applied at once (one tree lock, one warning line at most).
const APPLIED_TOGETHER: usize = 16;

/// What the HEADs of one page's entries found, by key.
pub(super) type Heads = Vec<(String, StoreResult<ObjectMeta>)>;

impl Fs {
    /// The keys of `page`'s entries (under `dir_key`) whose persisted metadata the mount
    /// does not have, to HEAD: files by their key, directories by their marker's. Files
    /// an earlier mount HEADed, unchanged since, are answered from what it found instead
    /// (the second part, to apply like HEADs once the page is in the tree). `of_many`: the
    /// page is one of a listing of several.
    pub(super) fn keys_wanting_metadata(&self, dir_key: &str, page: &ListPage, of_many: bool) -> (Vec<String>, Heads) {
        if !self.resolved.profile.user_metadata {
            return Default::default();
        }
        let entries = listing::page_entries(dir_key, page, self.resolved.profile.hidden_prefixes);
        let tree = self.tree();
        let (mut wanted, mut recalled) = (Vec::new(), Heads::new());
        // A directory of several pages is large however few files one page holds (a
        // segment's last, or one guessed short).
        let files = match of_many {
            true => usize::MAX,
            false => entries.iter().filter(|e| e.kind == Kind::File).count(),
        };
        let defer = self.listing_defers_metadata(&tree, tree.ino_of(dir_key), files);
        for e in entries.into_iter().filter(|e| self.may_carry_metadata(e.kind)) {
            let key = match e.kind {
                Kind::Dir => format!("{dir_key}{}/", e.name),
                _ => format!("{dir_key}{}", e.name),
            };
            if tree.metadata_known(&key, e.etag.as_deref(), e.mtime) {
                continue;
            }
            match self.recall_listed(e.kind, &key, e.size, e.etag, e.mtime) {
                Some(meta) => recalled.push((key, Ok(meta))),
                // Read by its lookup, by the GET of its data (`metadata_by_get.rs`).
                None if defer && self.metadata_may_wait(e.kind, e.size) => {}
                None => wanted.push(key),
            }
        }
        (wanted, recalled)
    }

    /// The keys among `inos` whose persisted metadata is still to be read, to HEAD, and
    /// what an earlier mount found for those unchanged since (as for a listing's). Among
    /// many, files whose HEADs may wait for their lookups are left to them.
    fn keys_of_unloaded(&self, inos: &[u64]) -> (Vec<String>, Heads) {
        let tree = self.tree();
        let mut recalled = Heads::new();
        let nodes: Vec<_> = inos.iter().filter_map(|ino| tree.get(*ino)).collect();
        let files = nodes.iter().filter(|n| n.attr.kind == Kind::File).count();
        // One node is a lookup's own, whose HEAD waited already.
        let defer = nodes.len() > 1 && self.listing_defers_metadata(&tree, nodes.first().map(|n| n.parent), files);
        let wanted = nodes
            .into_iter()
            .filter(|n| !n.local && !n.metadata_loaded && self.may_carry_metadata(n.attr.kind))
            .filter(|n| {
                // Not yet loaded, a file's node holds what its listing showed.
                match self.recall_listed(n.attr.kind, &n.key, n.attr.size, n.etag.clone(), n.attr.mtime()) {
                    Some(meta) => {
                        recalled.push((n.key.clone(), Ok(meta)));
                        false
                    }
                    None => !(defer && self.metadata_may_wait(n.attr.kind, n.attr.size)),
                }
            })
            .map(|n| n.key.clone())
            .collect();
        (wanted, recalled)
    }

    /// What an earlier mount's HEAD found for a file listed with this size, ETag and
    /// LastModified, if it is unchanged since (directories' markers are not remembered).
    fn recall_listed(
        &self,
        kind: Kind,
        key: &str,
        size: u64,
        etag: Option<String>,
        modified: std::time::SystemTime,
    ) -> Option<ObjectMeta> {
        if kind == Kind::Dir {
            return None;
        }
        self.remembered.recall(&ObjectMeta {
            key: key.to_string(),
            size,
            etag,
            last_modified: Some(modified),
            metadata: Default::default(),
        })
    }

    /// Whether an entry of `kind` can have persisted metadata to read: where the provider
    /// keeps user metadata, a file always, a directory where it can have a marker.
    pub(super) fn may_carry_metadata(&self, kind: Kind) -> bool {
        let profile = &self.resolved.profile;
        profile.user_metadata && (kind != Kind::Dir || profile.markers != crate::provider::Markers::Forbidden)
    }

    /// HEADs `keys`, at most [`CONCURRENT_HEADS`] at once across the mount. With
    /// `unless_loaded` (keys of nodes found unloaded), a key whose node another HEAD or a
    /// GET loaded while it waited for its turn is passed over: a walk's readdir and the
    /// sweep or prefetch of the same directory HEADed 18 of 280 entries twice under load.
    /// (A listing's keys may be new versions of loaded nodes: those are always HEADed.)
    pub(super) async fn head_all(&self, keys: Vec<String>, unless_loaded: bool) -> Heads {
        futures::stream::iter(keys)
            .map(|key| async move {
                if unless_loaded && self.tree().metadata_loaded(&key) {
                    return None;
                }
                let result = self.head_once(&key).await;
                Some((key, result))
            })
            .buffer_unordered(CONCURRENT_HEADS)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// HEADs `key` within [`CONCURRENT_HEADS`], or waits for the HEAD of it already under
    /// way (a prefetched listing's, a reader's).
    async fn head_once(&self, key: &str) -> StoreResult<ObjectMeta> {
        loop {
            match self.heads_in_flight.turn(key) {
                Turn::Follow(under_way) => {
                    if let Some(result) = heads_in_flight::wait(under_way).await {
                        return result;
                    }
                    // Its leader gave up (cancelled): take the turn.
                }
                Turn::Lead(lead) => {
                    let _slot = self.list_prefetch.heads.acquire().await.expect("never closed");
                    self.stats.head_requests.fetch_add(1, Ordering::Relaxed);
                    let result = self.store.head(key).await;
                    // In the tree before the key leaves the HEADs under way: a reader that
                    // looks between the two would find it neither loaded nor under way and
                    // HEAD it again (the caller applies it too, and reports an error).
                    self.apply_head_result(&mut self.tree(), key, &result);
                    return lead.finish(result);
                }
            }
        }
    }

    /// HEADs those of `keys` whose metadata is still unknown when their turn comes, within
    /// `share` (background work leaves the foreground its request slots), and applies
    /// what they find a few at a time as they come, so that a reader meanwhile finds most
    /// of them loaded. A reader that needs one not in yet HEADs it itself, at full width.
    pub(super) async fn head_unloaded(&self, keys: Vec<String>, share: &tokio::sync::Semaphore) {
        futures::stream::iter(keys)
            .map(|key| async move {
                let _share = share.acquire().await.expect("never closed");
                // A reader HEADing it meanwhile applies what it finds itself.
                if self.tree().metadata_loaded(&key) || self.heads_in_flight.under_way(&key) {
                    return None;
                }
                let result = self.head_once(&key).await;
                Some((key, result))
            })
            .buffer_unordered(CONCURRENT_HEADS)
            .filter_map(std::future::ready)
            .ready_chunks(APPLIED_TOGETHER)
            .for_each(|heads| {
                self.apply_heads(&heads);
                std::future::ready(())
            })
            .await
    }

    /// Applies what the HEADs found to the entries they were for. A failed HEAD leaves its
    /// entry with default attributes (one log line per page): the listing is still
    /// answered, and the next lookup of the name asks again.
    pub(super) fn apply_heads(&self, heads: &Heads) {
        let mut failed = None;
        let mut tree = self.tree();
        for (key, result) in heads {
            if let Some(e) = self.apply_head_result(&mut tree, key, result) {
                failed = Some((key, e));
            }
        }
        drop(tree);
        // Background HEADs cut short by the exit are no one's concern.
        if let Some((key, e)) = failed.filter(|_| !self.unmounted.load(Ordering::Relaxed)) {
            tracing::warn!("HEAD {key:?} (for its mode, owner and mtime): {e}; shown with default attributes");
        }
    }

    /// Applies one HEAD's answer to its entry (and remembers a file's for the next mount);
    /// returns the error to report, if it failed otherwise than with NotFound.
    pub(super) fn apply_head_result<'a>(
        &self,
        tree: &mut Tree,
        key: &str,
        result: &'a StoreResult<ObjectMeta>,
    ) -> Option<&'a StoreError> {
        match result {
            Ok(head) => {
                tree.apply_head(key, head, &|ino| self.handles.has_data(ino));
                if !key.ends_with('/') {
                    self.remembered.remember(head);
                }
                None
            }
            Err(StoreError::NotFound) => {
                tree.apply_missing(key);
                None
            }
            Err(e) => Some(e),
        }
    }

    /// The daemon is exiting: what HEADs found, and where large directories' listings
    /// split, go to the cache directory for the next mount.
    pub fn save_remembered_metadata(&self) {
        self.remember_listing_splits();
        if let Err(e) = self.remembered.save() {
            tracing::warn!("saving what HEADs found for the next mount: {e}; it will HEAD those files again");
        }
    }

    /// Reads the persisted metadata of those of `inos` that lack it.
    pub(super) async fn load_metadata(&self, inos: &[u64]) {
        let (keys, recalled) = self.keys_of_unloaded(inos);
        if !recalled.is_empty() {
            self.apply_heads(&recalled);
        }
        if !keys.is_empty() {
            let heads = self.head_all(keys, true).await;
            self.apply_heads(&heads);
        }
    }

    /// As [`Self::load_metadata`], the HEADs within `share` (background work).
    pub(super) async fn load_metadata_within(&self, inos: &[u64], share: &tokio::sync::Semaphore) {
        let (keys, recalled) = self.keys_of_unloaded(inos);
        if !recalled.is_empty() {
            self.apply_heads(&recalled);
        }
        self.head_unloaded(keys, share).await;
    }

    /// The first page of `dir_key`'s listing into the cache; then, once `listed` has told
    /// the waiters that the listing is in, and if `heads_now` says so, its entries'
    /// metadata, HEADed within `share` (else a readdir of the directory, or the lookups
    /// of its entries, HEAD them when they come).
    pub(super) async fn list_then_load_metadata(
        &self,
        dir: u64,
        dir_key: &str,
        share: &tokio::sync::Semaphore,
        listed: impl FnOnce(),
        heads_now: impl FnOnce() -> bool,
    ) -> StoreResult<()> {
        let start = self.listing_start(dir, dir_key);
        let page = match self.first_page(dir_key).await {
            Ok(page) => page,
            Err(e) => {
                listed();
                return Err(e);
            }
        };
        let (wanted, recalled) = self.keys_wanting_metadata(dir_key, &page, page.next.is_some());
        self.absorb_dir_page(dir, dir_key, &page, &start);
        self.apply_heads(&recalled);
        listed();
        if heads_now() {
            self.head_unloaded(wanted, self.listing_heads_share(dir, share)).await;
        }
        Ok(())
    }
}
