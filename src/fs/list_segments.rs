//! A directory of many pages listed again whole in one round trip. A LIST page follows the
//! one before it (its continuation token), so a directory of 10,000 names took ten round
//! trips in a row to list again: over 40 ms, with the server's own time per page, 1.4-1.9 s
//! that a DataLoader's second epoch after an idle gap waited for. The names the last
//! listing showed split the directory into segments of fewer names than a page, and every
//! segment is listed at once from the key before it (`StartAfter`). Each segment takes in
//! only its own keys, and lists on while it has not reached the next one's first (names
//! added since), so the segments make the whole listing whatever changed in between.
//! A directory no listing has split yet is split where its first page suggests
//! (`guessed_splits.rs`): a readdir's listing goes on in guessed segments at once, more
//! of them each time the last one still does not reach the directory's end.

use super::Fs;
use super::guessed_splits::guess_splits;
use super::listing::ListingStart;
use super::tree::Tree;
use crate::store::pagination::Pagination;
use crate::store::{ListPage, ListRequest, StoreError};
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

/// Names per segment: fewer than a page's 1,000 keys, so a segment that gained up to 100
/// keys (or holds the directory's marker and names no file can have) still takes one LIST.
const SEGMENT: usize = 900;
/// Segments listed at once.
const AT_ONCE: usize = 16;
/// Segments guessed after the first page of a directory's last segment (doubled each
/// time the last guessed one still has more, up to `MOST_GUESSES`): a directory of two
/// pages costs a few empty LISTs at most, one of 100,000 names a handful of round trips.
const FIRST_GUESSES: usize = 4;
const MOST_GUESSES: usize = 64;

#[derive(Default)]
pub(super) struct ListSegments {
    /// The store answered a LIST from its first key although asked to start after another:
    /// it ignores `StartAfter`, so directories are listed page after page.
    start_after_ignored: AtomicBool,
    /// The store refused a LIST with `StartAfter` (an error that is neither a passing
    /// fault nor the credentials').
    start_after_failed: AtomicBool,
}

impl ListSegments {
    /// Whether a listing can no longer start after a key (ignored or refused).
    fn start_after_unusable(&self) -> bool {
        self.start_after_ignored.load(Ordering::Relaxed) || self.start_after_failed.load(Ordering::Relaxed)
    }
}

/// The keys a segment of a listing answers for: after `lower` (from the first key when
/// `None`), up to and with `upper` (to the end when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    lower: Option<String>,
    upper: Option<String>,
}

/// Whether the `i`th of `count` names ends a segment: every `SEGMENT`th, but the last.
fn ends_a_segment(i: usize, count: usize) -> bool {
    (i + 1).is_multiple_of(SEGMENT) && i + 1 < count
}

/// The keys after which `dir`'s listing splits, from its names in the tree. Only these
/// keys are made: the tree stays locked for one walk of its names.
fn splits_in_tree(tree: &Tree, dir: u64) -> Vec<String> {
    let Some(node) = tree.get(dir) else { return Vec::new() };
    let count = node.children.len();
    node.children
        .iter()
        .enumerate()
        .filter(|(i, _)| ends_a_segment(*i, count))
        .filter_map(|(_, (name, ino))| tree.child_key(dir, name, tree.get(*ino)?.attr.kind))
        .collect()
}

/// The segments between `bounds` (each the last key of one). The tree orders names, and a
/// directory's key ends in `/`, so the bounds are sorted again in the bucket's order.
fn segments_between(mut bounds: Vec<String>) -> Vec<Segment> {
    bounds.sort_unstable();
    bounds.dedup();
    let lowers = std::iter::once(None).chain(bounds.iter().cloned().map(Some));
    let uppers = bounds.iter().cloned().map(Some).chain([None]);
    lowers
        .zip(uppers)
        .map(|(lower, upper)| Segment { lower, upper })
        .collect()
}

impl Segment {
    fn holds(&self, key: &str) -> bool {
        self.lower.as_deref().is_none_or(|l| key > l) && self.upper.as_deref().is_none_or(|u| key <= u)
    }

    /// Whether `page` starts before the segment: the store ignored `StartAfter`. A common
    /// prefix equal to `lower` may come back (keys after a prefix's own roll up into it).
    fn answered_from_the_start(&self, page: &ListPage) -> bool {
        let Some(lower) = self.lower.as_deref() else {
            return false;
        };
        page.objects.iter().any(|o| o.key.as_str() <= lower) || page.prefixes.iter().any(|p| p.as_str() < lower)
    }

    /// Drops the page's keys outside the segment (the next segment's, or, from a store
    /// that ignores `StartAfter`, the ones before).
    fn keep_own(&self, page: &mut ListPage) {
        page.objects.retain(|o| self.holds(&o.key));
        page.prefixes.retain(|p| self.holds(p));
    }
}

/// The last key of a page, in the bucket's order.
fn last_key(page: &ListPage) -> Option<String> {
    let object = page.objects.last().map(|o| o.key.clone());
    object.max(page.prefixes.last().cloned())
}

/// How far the segments have come, told to the listing's waiters in key order.
struct Reached {
    /// Per segment: done, and the last key taken in so far.
    done: Vec<bool>,
    upto: Vec<Option<String>>,
}

impl Reached {
    /// The key up to which every key is taken in: through the segments done in a row from
    /// the first, and into the one after them.
    fn upto(&self, segments: &[Segment]) -> Option<String> {
        let mut reached = None;
        for (i, s) in segments.iter().enumerate() {
            if !self.done[i] {
                return self.upto[i].clone().or(reached);
            }
            reached.clone_from(&s.upper);
        }
        reached
    }
}

impl Fs {
    /// Lists the directory `dir` (key `dir_key`) whole into the tree, in segments at once,
    /// telling `reached` every key up to which all are taken in; true if it listed every
    /// segment to its end.
    pub(super) async fn list_in_segments(&self, dir: u64, dir_key: &str, reached: &(dyn Fn(String) + Sync)) -> bool {
        let start = self.listing_start(dir, dir_key);
        let segments = self.segments_for(dir);
        let shown = Mutex::new(HashSet::new());
        let progress = Mutex::new(Reached {
            done: vec![false; segments.len()],
            upto: vec![None; segments.len()],
        });
        let tell = |i: usize, upto: Option<String>, done: bool| {
            let mut p = progress.lock();
            p.upto[i] = upto;
            p.done[i] = done;
            if let Some(key) = p.upto(&segments) {
                reached(key);
            }
        };
        let at_once = tokio::sync::Semaphore::new(AT_ONCE);
        let (at_once, start, shown) = (&at_once, &start, &shown);
        let listed = futures::future::join_all(segments.iter().enumerate().map(|(i, segment)| async move {
            let _turn = at_once.acquire().await;
            let tell = move |upto, done| tell(i, upto, done);
            self.list_segment(dir, dir_key, segment, start, shown, tell).await
        }))
        .await;
        if let Some(e) = listed.iter().find_map(|r| r.as_ref().err()) {
            tracing::debug!("listing {dir_key:?} again to revalidate its names: {e}");
            return false;
        }
        // Every page was taken in as one of many; the names shown are now the whole listing.
        let mut shown = std::mem::take(&mut *shown.lock());
        self.absorb_listed_page(dir, dir_key, &ListPage::default(), start, &mut shown, true);
        true
    }

    /// The segments of `dir`'s listing, split at the keys of its names in the tree (the
    /// last listing's and the mount's own); until this mount has listed it whole, where
    /// the last mount's listing split if that cuts finer (a first listing after a
    /// remount). One segment if the store cannot start a listing after a key.
    fn segments_for(&self, dir: u64) -> Vec<Segment> {
        if self.list_segments.start_after_unusable() {
            return segments_between(Vec::new());
        }
        let (dir_key, in_tree, listed) = {
            let tree = self.tree();
            let Some(node) = tree.get(dir) else {
                return segments_between(Vec::new());
            };
            (
                node.key.clone(),
                splits_in_tree(&tree, dir),
                node.listed_until.is_some(),
            )
        };
        if listed {
            return segments_between(in_tree);
        }
        let remembered = self.remembered.listing_splits(&dir_key);
        segments_between(if remembered.len() > in_tree.len() {
            remembered
        } else {
            in_tree
        })
    }

    /// Hands where every directory listed whole splits to what the next mount remembers.
    pub(super) fn remember_listing_splits(&self) {
        let listed: Vec<(String, Vec<String>)> = {
            let tree = self.tree();
            tree.listed_dirs()
                .map(|(ino, node)| (node.key.clone(), splits_in_tree(&tree, ino)))
                .collect()
        };
        for (dir_key, splits) in listed {
            self.remembered.remember_listing_splits(&dir_key, splits);
        }
    }

    /// Lists one segment page by page, taking in its own keys and telling `tell` the last
    /// key taken in (and whether the segment is done).
    async fn list_segment(
        &self,
        dir: u64,
        dir_key: &str,
        segment: &Segment,
        start: &ListingStart,
        shown: &Mutex<HashSet<String>>,
        tell: impl Fn(Option<String>, bool),
    ) -> Result<(), StoreError> {
        if segment.lower.is_some() && self.list_segments.start_after_unusable() {
            // Found out by a segment before this one: this one would list from the first
            // key too. The listing fails (its waiters revalidate alone); the next goes
            // page after page.
            return Err(StoreError::Unsupported("listings from a middle key".into()));
        }
        let mut cursor = SegmentCursor::new(segment.clone(), 0);
        while let Some(listed) = cursor.next_page(self, dir_key).await? {
            self.absorb_listed_page(dir, dir_key, &listed.page, start, &mut shown.lock(), false);
            self.trim_tree();
            tell(listed.reached, !listed.more);
        }
        Ok(())
    }

    /// The pages of `dir_key`'s listing in key order, for a reader that takes them one by
    /// one (readdir): segments listed at once, `AT_ONCE` at most ahead of the reader.
    pub(super) fn pages_in_order(self: &Arc<Self>, dir: u64, dir_key: &str) -> OrderedPages {
        let mut pages = OrderedPages {
            fs: self.clone(),
            dir_key: dir_key.to_string(),
            waiting: self.segments_for(dir).into(),
            running: VecDeque::new(),
            guesses: FIRST_GUESSES,
        };
        for _ in 0..AT_ONCE {
            pages.start_next();
        }
        pages
    }
}

/// One page of a segment, its keys only.
pub(super) struct SegmentPage {
    pub page: ListPage,
    /// Keys under the directory being deleted when its LIST was sent.
    pub hidden_at_start: HashSet<String>,
    /// Every key up to this one is in this page or an earlier one of its segment.
    reached: Option<String>,
    /// The segment has more pages.
    more: bool,
    /// Segments guessed to follow this one (which ended at this page's last key), the
    /// last of them to the directory's end.
    then: Vec<Segment>,
}

/// Where a segment's listing stands.
struct SegmentCursor {
    segment: Segment,
    pagination: Pagination,
    continuation: Option<String>,
    done: bool,
    /// Splits to guess if the segment, listed to the directory's end, has more than a page.
    guesses: usize,
}

impl SegmentCursor {
    fn new(segment: Segment, guesses: usize) -> SegmentCursor {
        SegmentCursor {
            segment,
            pagination: Pagination::default(),
            continuation: None,
            done: false,
            guesses,
        }
    }

    /// After a page of a segment to the directory's end that has more: the segment ends at
    /// the page's last key and the guessed ones follow (none if nothing is guessed).
    fn split_after(&mut self, fs: &Fs, dir_key: &str, page: &ListPage, last: Option<&String>) -> Vec<Segment> {
        let Some(last) = last else { return Vec::new() };
        if self.guesses == 0 || self.segment.upper.is_some() || fs.list_segments.start_after_unusable() {
            return Vec::new();
        }
        let splits = guess_splits(dir_key, page, self.guesses);
        if splits.is_empty() {
            return Vec::new();
        }
        tracing::debug!(
            "listing {dir_key:?} on in {} guessed segments after {last:?}: {:?}",
            splits.len() + 1,
            splits
        );
        self.segment.upper = Some(last.clone());
        let mut bounds = vec![last.clone()];
        bounds.extend(splits);
        let mut then = segments_between(bounds);
        // `segments_between` starts from the directory's first key.
        then.remove(0);
        then
    }

    /// The segment's next page, `None` after its last.
    async fn next_page(&mut self, fs: &Fs, dir_key: &str) -> Result<Option<SegmentPage>, StoreError> {
        if self.done {
            return Ok(None);
        }
        fs.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let request = ListRequest {
            prefix: dir_key.to_string(),
            delimiter: Some("/".into()),
            start_after: self
                .continuation
                .is_none()
                .then(|| self.segment.lower.clone())
                .flatten(),
            continuation: self.continuation.take(),
            max_keys: Some(1000),
        };
        let hidden_at_start = fs.deferred.hidden_under(dir_key);
        let mut page = match fs.store.list_page(&request).await {
            // Refused with `StartAfter` (not a passing fault or the credentials): listed
            // from the first key like a store that ignores it, and page after page from now.
            Err(e @ (StoreError::Unsupported(_) | StoreError::Other(_))) if request.start_after.is_some() => {
                if !fs.list_segments.start_after_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "a listing of {dir_key:?} from a middle key (StartAfter) failed: {e}; directories are listed page after page from now on"
                    );
                }
                fs.stats.list_requests.fetch_add(1, Ordering::Relaxed);
                fs.store
                    .list_page(&ListRequest {
                        start_after: None,
                        ..request
                    })
                    .await?
            }
            page => page?,
        };
        fs.drop_emptied_prefixes(&mut page, &hidden_at_start).await?;
        let refused = fs.list_segments.start_after_failed.load(Ordering::Relaxed);
        if !refused
            && self.segment.answered_from_the_start(&page)
            && !fs.list_segments.start_after_ignored.swap(true, Ordering::Relaxed)
        {
            tracing::info!("the store ignores StartAfter in listings: directories are listed page after page");
        }
        let next = self.pagination.next(dir_key, &page)?;
        let last = last_key(&page);
        let then = match next {
            Some(_) => self.split_after(fs, dir_key, &page, last.as_ref()),
            None => Vec::new(),
        };
        let past_upper = match (&last, &self.segment.upper) {
            (Some(last), Some(upper)) => last >= upper,
            _ => false,
        };
        self.segment.keep_own(&mut page);
        self.continuation = next.filter(|_| !past_upper);
        self.done = self.continuation.is_none();
        Ok(Some(SegmentPage {
            page,
            hidden_at_start,
            reached: last,
            more: !self.done,
            then,
        }))
    }
}

/// A listing's pages in key order (`pages_in_order`): each segment listed by its own task
/// into its own channel, started as the reader passes the ones before it. A segment ahead
/// of the reader waits with its pages until the reader comes (a page or two each), and
/// the tasks end when the reader drops this.
pub(super) struct OrderedPages {
    fs: Arc<Fs>,
    dir_key: String,
    waiting: VecDeque<Segment>,
    running: VecDeque<mpsc::Receiver<Result<SegmentPage, StoreError>>>,
    /// Splits the next segment to the directory's end guesses.
    guesses: usize,
}

impl OrderedPages {
    /// The next page and whether it is the listing's last; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<(SegmentPage, bool), StoreError>> {
        loop {
            let segment = self.running.front_mut()?;
            match segment.recv().await {
                Some(Ok(mut page)) => {
                    if !page.then.is_empty() {
                        for segment in page.then.drain(..).rev() {
                            self.waiting.push_front(segment);
                        }
                        self.guesses = (self.guesses * 2).min(MOST_GUESSES);
                        while self.running.len() < AT_ONCE && self.start_next() {}
                    }
                    let last = !page.more && self.running.len() == 1 && self.waiting.is_empty();
                    return Some(Ok((page, last)));
                }
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.running.pop_front();
                    self.start_next();
                }
            }
        }
    }

    /// Starts the next segment waiting; false if none is.
    fn start_next(&mut self) -> bool {
        let Some(mut segment) = self.waiting.pop_front() else {
            return false;
        };
        if segment.lower.is_some() && self.fs.list_segments.start_after_unusable() {
            // Each segment left would list from the first key: one lists to the end instead.
            segment.upper = None;
            self.waiting.clear();
        }
        let guesses = if segment.upper.is_none() { self.guesses } else { 0 };
        let (tx, rx) = mpsc::channel(1);
        self.running.push_back(rx);
        let (fs, dir_key) = (self.fs.clone(), self.dir_key.clone());
        tokio::spawn(async move {
            let mut cursor = SegmentCursor::new(segment, guesses);
            loop {
                let page = match cursor.next_page(&fs, &dir_key).await {
                    Ok(Some(page)) => Ok(page),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::ROOT_INO;
    use crate::fs::listed_dir_tests::{key, listed, lists_reach, mount, names_in, read_whole, store_of};
    use crate::store::memory::MemoryStore;
    use crate::store::{ObjectMeta, ObjectStore, PutOptions};
    use std::time::Duration;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(key).collect()
    }

    /// The segments of a listing of `keys` (sorted), as `segments_for` splits the tree's.
    fn segments_of(keys: &[String]) -> Vec<Segment> {
        let count = keys.len();
        let bounds = keys.iter().enumerate().filter(|(i, _)| ends_a_segment(*i, count));
        segments_between(bounds.map(|(_, k)| k.clone()).collect())
    }

    fn page(objects: &[&str], prefixes: &[&str]) -> ListPage {
        ListPage {
            objects: objects
                .iter()
                .map(|k| ObjectMeta {
                    key: k.to_string(),
                    size: 1,
                    etag: None,
                    last_modified: None,
                    metadata: Default::default(),
                })
                .collect(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            next: None,
        }
    }

    #[test]
    fn segments_cover_every_key_once_and_fit_a_page() {
        assert_eq!(
            segments_of(&[]),
            [Segment {
                lower: None,
                upper: None
            }]
        );
        assert_eq!(segments_of(&keys(SEGMENT)).len(), 1);
        let all = keys(10_000);
        let segments = segments_of(&all);
        assert_eq!(segments.len(), 12);
        for k in all.iter().chain([&"d/".to_string(), &"d/zz".to_string()]) {
            assert_eq!(segments.iter().filter(|s| s.holds(k)).count(), 1, "{k}");
        }
        // A directory's key sorts after names that follow it in the tree (`a/` > `a.b`).
        let split = segments_between(vec!["d/a/".into(), "d/a.b".into(), "d/a.b".into()]);
        assert_eq!(split.len(), 3);
        for k in ["d/a", "d/a.b", "d/a.c", "d/a/", "d/b"] {
            assert_eq!(split.iter().filter(|s| s.holds(k)).count(), 1, "{k}");
        }
        for s in &segments {
            assert!(all.iter().filter(|k| s.holds(k)).count() <= SEGMENT);
        }
    }

    #[test]
    fn a_page_from_before_the_segment_means_start_after_was_ignored() {
        let s = Segment {
            lower: Some("d/m/".into()),
            upper: Some("d/t".into()),
        };
        assert!(!s.answered_from_the_start(&page(&["d/n"], &["d/m/", "d/p/"])));
        assert!(s.answered_from_the_start(&page(&["d/a", "d/n"], &[])));
        assert!(s.answered_from_the_start(&page(&[], &["d/b/"])));
        let mut p = page(&["d/a", "d/n", "d/t", "d/u"], &["d/m/", "d/p/", "d/x/"]);
        s.keep_own(&mut p);
        assert_eq!(last_key(&p).as_deref(), Some("d/t"));
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.prefixes, ["d/p/"]);
    }

    #[test]
    fn waiters_are_told_how_far_the_segments_in_a_row_reached() {
        let segments = segments_of(&keys(2_000));
        let mut r = Reached {
            done: vec![false; 3],
            upto: vec![None; 3],
        };
        assert_eq!(r.upto(&segments), None);
        r.done[1] = true;
        assert_eq!(r.upto(&segments), None, "the first segment is not in yet");
        r.upto[0] = Some("d/f00100".into());
        assert_eq!(r.upto(&segments).as_deref(), Some("d/f00100"));
        r.done[0] = true;
        assert_eq!(r.upto(&segments).as_deref(), Some("d/f01799"));
        r.upto[2] = Some("d/f01900".into());
        assert_eq!(r.upto(&segments).as_deref(), Some("d/f01900"));
    }

    /// A directory of 3,000 names is listed again with its four segments' LISTs in flight
    /// at once; page after page, one was.
    #[tokio::test]
    async fn a_large_directory_is_listed_again_in_one_round_trip() {
        let d = listed(3_000, Duration::from_secs(60)).await;
        let (store, fs, dir) = (&d.store, &d.fs, d.dir);
        let lists = store.requests("list");
        let gate = store.hold_lists();
        let listing = tokio::spawn({
            let fs = fs.clone();
            async move { fs.list_in_segments(dir, "d/", &|_| {}).await }
        });
        assert_eq!(
            d.lists_reach(lists + 4).await,
            lists + 4,
            "the segments' LISTs were not sent at once"
        );
        gate.close();
        assert!(listing.await.expect("listing"));
        assert_eq!(store.requests("list"), lists + 4);
        assert_eq!(d.children(), names_in(store));
    }

    /// Names added inside a segment (more than its page holds), deleted, and a directory
    /// among them: the segments still make the listing whole and exact, and the progress
    /// told to the waiters only goes forward.
    #[tokio::test]
    async fn changes_since_the_last_listing_are_taken_in_whole() {
        let d = listed(3_000, Duration::from_secs(60)).await;
        let (store, fs, dir) = (&d.store, &d.fs, d.dir);
        for i in 1_000..1_050 {
            store.delete(&format!("d/f{i:05}")).await.expect("delete");
        }
        for i in 0..300 {
            let key = format!("d/f01200x{i:03}");
            store
                .put(&key, vec![1].into(), &PutOptions::default())
                .await
                .expect("put");
        }
        for key in ["d/f00950/inner", "d/g", "d/a"] {
            store
                .put(key, vec![1].into(), &PutOptions::default())
                .await
                .expect("put");
        }
        let told = Mutex::new(Vec::new());
        assert!(fs.list_in_segments(dir, "d/", &|k| told.lock().push(k)).await);
        assert_eq!(d.children(), names_in(store));
        // `f00950` was a file and is now a directory too: shown once, as the directory.
        assert_eq!(d.children().len(), 3_000 - 50 + 300 + 2);
        let told = told.into_inner();
        assert!(told.windows(2).all(|w| w[0] <= w[1]), "progress went back");
        let tree = fs.tree();
        let inner = tree
            .get(dir)
            .and_then(|d| d.children.get("f00950"))
            .and_then(|i| tree.get(*i));
        assert_eq!(inner.map(|n| n.attr.kind), Some(crate::fs::attr::Kind::Dir));
    }

    /// A store that ignores `StartAfter`: the whole listing that finds it out takes in
    /// what its segments listed (or fails, if a segment not yet started would list from the
    /// first key too: its waiters then revalidate alone), and from then on a directory is
    /// listed page after page (3 LISTs for 3,000 names), whole and exact.
    #[tokio::test]
    async fn a_store_that_ignores_start_after_is_listed_page_after_page() {
        let d = listed(3_000, Duration::from_secs(60)).await;
        let (store, fs, dir) = (&d.store, &d.fs, d.dir);
        store.ignore_start_after();
        store.delete("d/f02500").await.expect("delete");
        if fs.list_in_segments(dir, "d/", &|_| {}).await {
            assert_eq!(d.children(), names_in(store));
        }
        let lists = store.requests("list");
        assert!(fs.list_in_segments(dir, "d/", &|_| {}).await);
        assert_eq!(store.requests("list"), lists + 3);
        assert_eq!(d.children(), names_in(store));
    }

    /// Every entry of a readdir, in order, `.` and `..` left out.
    async fn readdir_names(fs: &Arc<Fs>, dir: u64) -> Vec<String> {
        let fh = fs.opendir(dir).await.expect("opendir");
        let mut names = Vec::new();
        let mut next = 0;
        loop {
            let page = fs.readdir(dir, fh, next).await.expect("readdir");
            let Some(last) = page.last() else { return names };
            next = last.next_offset;
            names.extend(page.into_iter().map(|e| e.name).filter(|n| n != "." && n != ".."));
        }
    }

    /// A readdir of a large directory past its TTL sends its segments' LISTs at once and
    /// hands out every entry once, in order, with the changes since the last listing.
    #[tokio::test]
    async fn a_readdir_past_the_ttl_lists_the_segments_at_once() {
        let ttl = Duration::from_millis(300);
        let d = listed(3_000, ttl).await;
        for i in 0..150 {
            let key = format!("d/f01000x{i:03}");
            d.store
                .put(&key, vec![1].into(), &PutOptions::default())
                .await
                .expect("put");
        }
        d.store.delete(&key(2_000)).await.expect("delete");
        tokio::time::sleep_until((d.listed_at + ttl).into()).await;
        let lists = d.store.requests("list");
        let gate = d.store.hold_lists();
        let readdir = tokio::spawn({
            let fs = d.fs.clone();
            let dir = d.dir;
            async move { readdir_names(&fs, dir).await }
        });
        assert_eq!(
            d.lists_reach(lists + 4).await,
            lists + 4,
            "the segments' LISTs were not sent at once"
        );
        gate.close();
        let names = readdir.await.expect("readdir");
        assert_eq!(names, names_in(&d.store), "every entry once, in order");
        assert_eq!(
            d.store.requests("list"),
            lists + 5,
            "the segment that grew took a second page"
        );
    }

    /// A store of `files` in `d/`, and the cache directory of a first mount that listed
    /// `d` whole and ended (saving what it remembers).
    async fn listed_by_a_first_mount(files: usize) -> (Arc<MemoryStore>, tempfile::TempDir) {
        let store = store_of(files).await;
        let cache = tempfile::tempdir().expect("temp dir");
        let first = mount(&store, cache.path(), Duration::from_secs(60), true);
        let dir = first.lookup(ROOT_INO, "d").await.expect("d").ino;
        assert_eq!(read_whole(&first, dir).await.len(), files + 2);
        first.save_remembered_metadata();
        (store, cache)
    }

    /// A directory's first readdir after a remount is split where the last mount's
    /// listing split it (what that mount remembered): its segments' LISTs go at once,
    /// rather than page after page, and every entry comes once, in order. Its lookup
    /// lists one key of it, not a page: the readdir lists the rest.
    #[tokio::test]
    async fn a_remount_lists_a_large_directory_in_the_segments_the_last_mount_saw() {
        let (store, cache) = listed_by_a_first_mount(3_000).await;
        let ttl = Duration::from_secs(60);
        let second = mount(&store, cache.path(), ttl, true);
        let entries = store.requests("listed_entries");
        let dir = second.lookup(ROOT_INO, "d").await.expect("d").ino;
        let lists = lists_reach(&store, 0).await;
        // The root's `d/`, and one key of `d/` to tell it is there (not a page of 1,000).
        assert_eq!(
            store.requests("listed_entries") - entries,
            2,
            "the lookup listed a page"
        );
        let gate = store.hold_lists();
        let readdir = tokio::spawn({
            let fs = second.clone();
            async move { readdir_names(&fs, dir).await }
        });
        assert_eq!(
            lists_reach(&store, lists + 4).await,
            lists + 4,
            "the segments' LISTs were not sent at once"
        );
        gate.close();
        assert_eq!(readdir.await.expect("readdir"), names_in(&store));
        assert_eq!(store.requests("list"), lists + 4);
    }

    /// Remembered splits serve a mount until it has listed the directory itself: one that
    /// shrank since the last mount is listed whole once in the old segments (exactly),
    /// then in its own (two LISTs for 1,500 names, not four).
    #[tokio::test]
    async fn a_directory_listed_by_this_mount_splits_by_its_own_names() {
        let (store, cache) = listed_by_a_first_mount(3_000).await;
        for i in 1_500..3_000 {
            store.delete(&key(i)).await.expect("delete");
        }
        let ttl = Duration::from_millis(300);
        let second = mount(&store, cache.path(), ttl, true);
        let dir = second.lookup(ROOT_INO, "d").await.expect("d").ino;
        let lists = lists_reach(&store, 0).await;
        assert_eq!(readdir_names(&second, dir).await, names_in(&store));
        assert_eq!(store.requests("list") - lists, 4, "the remembered segments");
        tokio::time::sleep(ttl).await;
        let lists = store.requests("list");
        assert_eq!(readdir_names(&second, dir).await, names_in(&store));
        assert_eq!(store.requests("list") - lists, 2, "its own two segments");
    }

    /// A store that refuses `StartAfter` with an error: the readdir still shows every
    /// name (the segments list from the first key instead), and the next listing goes page
    /// after page (3 LISTs for 3,000 names).
    #[tokio::test]
    async fn a_store_that_refuses_start_after_is_listed_page_after_page() {
        let ttl = Duration::from_millis(200);
        let d = listed(3_000, ttl).await;
        d.store.refuse_start_after();
        tokio::time::sleep_until((d.listed_at + ttl).into()).await;
        assert_eq!(readdir_names(&d.fs, d.dir).await, names_in(&d.store));
        let lists = d.store.requests("list");
        assert!(d.fs.list_in_segments(d.dir, "d/", &|_| {}).await);
        assert_eq!(d.store.requests("list"), lists + 3);
    }

    /// A readdir of a directory of more segments than are listed at once, on a store
    /// that ignores `StartAfter`: the segments not started when that is found are listed
    /// as one to the end, not each from the first key again.
    #[tokio::test]
    async fn segments_left_when_start_after_is_found_ignored_list_as_one() {
        let ttl = Duration::from_millis(200);
        let d = listed(20_000, ttl).await;
        d.store.ignore_start_after();
        tokio::time::sleep_until((d.listed_at + ttl).into()).await;
        let lists = d.store.requests("list");
        assert_eq!(readdir_names(&d.fs, d.dir).await, names_in(&d.store));
        let sent = d.store.requests("list") - lists;
        // The 16 started at once list from the first key up to their own ends, the other
        // 7 as one to the end: 163 LISTs here; with each of the 23 from the first key, 257.
        assert!(sent <= 165, "{sent} LISTs");
    }
}
