//! Directory listings: LIST pages turned into entries as they arrive, so the first entries
//! of a huge directory are answered after one request, and every page feeds the metadata
//! cache (so `ls -l` needs no HEAD per entry); and what a listing, older than the mount's
//! own changes since it was sent, must not undo (entries being deleted, newer local ones).

use super::attr::Kind;
use super::names::unusable_name;
use super::tree::Seen;
use super::{Fs, FsResult};
use crate::store::{ListPage, ListRequest, StoreError, StoreResult};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// The mount's own changes under a directory when a LIST of it was sent: the listing is
/// older than any change made since, and must not undo it.
pub(super) struct ListingStart {
    /// The directory's change count.
    pub changes: u64,
    /// Keys under the directory whose objects were being deleted. The listing may show
    /// them although their deletes are done by the time it arrives and they are no longer
    /// hidden.
    pub hidden: HashSet<String>,
}

/// One entry as readdir returns it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
    /// The offset of the entry after this one (what the kernel passes back to continue).
    pub next_offset: u64,
}

/// Where an open directory's listing stands.
pub struct DirStream {
    pub ino: u64,
    pub key: String,
    /// Entries of the current page; `entries[i]` has offset `base + i`.
    pub entries: Vec<DirEntry>,
    pub base: u64,
    /// Where the listing stands: not started, in progress, or complete.
    pub state: ListState,
    /// Names shown so far, to reconcile the cache once the listing is complete.
    pub shown: HashSet<String>,
    /// The directory's change count when the listing started (see `Tree::finish_listing`).
    pub changes_at_start: u64,
    /// Pages listed ahead of the reader, with the HEADs of their entries under way.
    pub pages: Option<tokio::sync::mpsc::Receiver<StoreResult<ListedPage>>>,
}

/// A LIST page listed ahead of the reader.
pub struct ListedPage {
    pub page: ListPage,
    /// Keys under the directory being deleted when the LIST was sent.
    pub hidden_at_start: HashSet<String>,
    /// The HEADs of its entries that lack metadata, started when the page arrived.
    pub heads: tokio::task::JoinHandle<super::listed_metadata::Heads>,
    /// The listing's last page.
    pub last: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListState {
    Start,
    More,
    /// The store's listing is complete; local-only entries were appended.
    Done,
}

/// Positions 0 and 1 are `.` and `..`; listing entries start at 2. An entry's
/// `next_offset` is its position plus one: where the kernel asks to continue.
pub const FIRST_LISTING_OFFSET: u64 = 2;

impl DirStream {
    pub fn new(ino: u64, key: String) -> DirStream {
        DirStream {
            ino,
            key,
            entries: Vec::new(),
            base: FIRST_LISTING_OFFSET,
            state: ListState::Start,
            shown: HashSet::new(),
            changes_at_start: 0,
            pages: None,
        }
    }

    pub fn restart(&mut self) {
        *self = DirStream::new(self.ino, std::mem::take(&mut self.key));
    }

    pub fn end_offset(&self) -> u64 {
        self.base + self.entries.len() as u64
    }
}

/// Turns a LIST page under `dir_key` into entries, in key order: names that cannot be file
/// names and hidden prefixes are skipped (with one warning per key), and a file that is
/// also a directory is shown as the directory.
pub fn page_entries(dir_key: &str, page: &ListPage, hidden: &[&str]) -> Vec<Seen> {
    let dirs: HashSet<&str> = page
        .prefixes
        .iter()
        .filter_map(|p| p.strip_prefix(dir_key)?.strip_suffix('/'))
        .collect();
    let mut out = Vec::with_capacity(page.objects.len() + page.prefixes.len());
    for o in &page.objects {
        let Some(name) = o.key.strip_prefix(dir_key) else {
            continue;
        };
        if name.is_empty() || dirs.contains(name) {
            // The directory's own marker, or a file hidden by a directory of its name.
            continue;
        }
        if let Some(why) = unusable_name(name) {
            warn_unusable(&o.key, why);
            continue;
        }
        out.push(Seen {
            name: name.to_string(),
            kind: Kind::File,
            size: o.size,
            mtime: o.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
            etag: o.etag.clone(),
        });
    }
    for p in &page.prefixes {
        let Some(name) = p.strip_prefix(dir_key).and_then(|n| n.strip_suffix('/')) else {
            continue;
        };
        if hidden.iter().any(|h| p == h) {
            continue;
        }
        if let Some(why) = unusable_name(name) {
            warn_unusable(p, why);
            continue;
        }
        out.push(Seen {
            name: name.to_string(),
            kind: Kind::Dir,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            etag: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The times a LIST page of directory `dir_key` tells of the directory itself: its marker's
/// LastModified (if the page holds the marker) and the newest LastModified of its entries.
pub fn page_times(dir_key: &str, page: &ListPage) -> (Option<SystemTime>, Option<SystemTime>) {
    let marker = page
        .objects
        .iter()
        .find(|o| o.key == dir_key)
        .and_then(|o| o.last_modified);
    let newest = page
        .objects
        .iter()
        .filter(|o| o.key != dir_key)
        .filter_map(|o| o.last_modified)
        .max();
    (marker, newest)
}

fn warn_unusable(key: &str, why: &str) {
    tracing::warn!("skipping key {key:?}: it cannot be a file name ({why})");
}

impl Fs {
    /// What a LIST of `prefix` in directory `dir`, sent now, must not undo.
    pub(super) fn listing_start(&self, dir: u64, prefix: &str) -> ListingStart {
        ListingStart {
            changes: self.tree().dir_changes(dir),
            hidden: self.deferred.hidden_under(prefix),
        }
    }

    /// Drops entries whose object is being deleted (a file's key, or a directory's
    /// marker), or was when the listing was sent: the bucket may list them until the
    /// delete is done.
    pub(super) fn drop_hidden(&self, parent_key: &str, seen: &mut Vec<Seen>, hidden_at_start: &HashSet<String>) {
        self.deferred.with_hidden(|hidden| {
            if hidden.is_empty() && hidden_at_start.is_empty() {
                return;
            }
            let deleting = |key: &String| hidden.contains(key) || hidden_at_start.contains(key);
            seen.retain(|e| {
                let key = format!("{parent_key}{}", e.name);
                let marker = format!("{key}/");
                !(deleting(&key) || (e.kind == Kind::Dir && deleting(&marker)))
            });
        });
    }

    /// Feeds a first page of a directory's listing into the cache; a complete one is the
    /// whole listing until the TTL runs out.
    pub(super) fn absorb_dir_page(
        &self,
        parent: u64,
        parent_key: &str,
        page: &crate::store::ListPage,
        start: &ListingStart,
    ) {
        let mut shown = HashSet::new();
        self.absorb_listed_page(parent, parent_key, page, start, &mut shown, page.next.is_none());
    }

    /// Feeds one page of a directory's listing into the cache, adding the names it showed
    /// to `shown` (the pages so far); after the `last` page, the names shown are the whole
    /// listing until the TTL runs out.
    pub(super) fn absorb_listed_page(
        &self,
        parent: u64,
        parent_key: &str,
        page: &crate::store::ListPage,
        start: &ListingStart,
        shown: &mut HashSet<String>,
        last: bool,
    ) {
        let mut seen = page_entries(parent_key, page, self.resolved.profile.hidden_prefixes);
        self.drop_hidden(parent_key, &mut seen, &start.hidden);
        let until = self.ttl_from_now();
        let (marker, newest) = page_times(parent_key, page);
        let mut tree = self.tree();
        tree.note_dir_listing(parent, marker, newest);
        for e in &seen {
            let held = |ino| self.handles.has_data(ino);
            if tree.upsert_listed(parent, e, until, start.changes, &held).is_some() {
                shown.insert(e.name.clone());
            }
        }
        if last {
            tree.finish_listing(parent, shown, until, start.changes);
        } else {
            tree.note_more_pages(parent);
        }
    }

    /// The first page of the `/`-delimited listing of `prefix` (counted in the stats),
    /// without the subdirectories this mount is emptying (`drop_emptied_prefixes`).
    pub(super) async fn first_page(&self, prefix: &str) -> Result<crate::store::ListPage, StoreError> {
        self.first_page_of(prefix, 1000).await
    }

    /// The same, of at most `max_keys` keys.
    pub(super) async fn first_page_of(
        &self,
        prefix: &str,
        max_keys: i32,
    ) -> Result<crate::store::ListPage, StoreError> {
        let hidden_at_start = self.deferred.hidden_under(prefix);
        self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let req = ListRequest {
            prefix: prefix.to_string(),
            delimiter: Some("/".into()),
            max_keys: Some(max_keys),
            ..Default::default()
        };
        let asked = std::time::Instant::now();
        let mut page = self.store.list_page(&req).await?;
        self.blocks.listing_answered(asked.elapsed());
        self.drop_emptied_prefixes(&mut page, &hidden_at_start).await?;
        Ok(page)
    }

    /// A subdirectory (a common prefix of a page) under which the bucket holds only keys
    /// whose deletes are on their way, or were when the page was listed
    /// (`hidden_at_start`), is gone already for this mount: `rm -r d` then `ls` must not
    /// show `d`. A prefix with such keys under it is listed again, whole, to tell (one
    /// LIST each, only while deletes under it are on their way).
    pub(super) async fn drop_emptied_prefixes(
        &self,
        page: &mut ListPage,
        hidden_at_start: &HashSet<String>,
    ) -> Result<(), StoreError> {
        if page.prefixes.is_empty() {
            return Ok(());
        }
        let mut at_start: Vec<&str> = hidden_at_start.iter().map(String::as_str).collect();
        at_start.sort_unstable();
        let any_at_start_under = |p: &str| {
            let from = at_start.partition_point(|k| *k < p);
            at_start.get(from).is_some_and(|k| k.starts_with(p))
        };
        let mut emptied = Vec::new();
        for p in &page.prefixes {
            let before = self.deferred.hidden_under(p);
            if before.is_empty() && !any_at_start_under(p) {
                continue;
            }
            self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
            let req = ListRequest {
                prefix: p.clone(),
                max_keys: Some(1000),
                ..Default::default()
            };
            let keys = self.store.list_page(&req).await?;
            let deleting = |k: &str| before.contains(k) || hidden_at_start.contains(k) || self.deferred.is_hidden(k);
            if keys.next.is_none() && keys.objects.iter().all(|o| deleting(&o.key)) {
                emptied.push(p.clone());
            }
        }
        page.prefixes.retain(|p| !emptied.contains(p));
        Ok(())
    }

    /// The first `count` keys under `prefix` (no delimiter).
    pub(super) async fn first_keys(&self, prefix: &str, count: i32) -> FsResult<crate::store::ListPage> {
        self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
        let req = ListRequest {
            prefix: prefix.to_string(),
            max_keys: Some(count),
            ..Default::default()
        };
        self.store
            .list_page(&req)
            .await
            .map_err(|e| self.fail("LIST", prefix, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectMeta;

    fn obj(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            etag: None,
            last_modified: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn page_entries_skip_markers_hidden_and_bad_names() {
        let page = ListPage {
            objects: vec![
                obj("d/"),
                obj("d/a"),
                obj("d/b"),
                obj("d/."),
                obj(&format!("d/{}", "x".repeat(300))),
            ],
            prefixes: vec![
                "d/b/".into(),
                "d/c/".into(),
                "d//".into(),
                "d/.s3compat_uploads/".into(),
            ],
            next: None,
        };
        let seen = page_entries("d/", &page, &["d/.s3compat_uploads/"]);
        let names: Vec<_> = seen.iter().map(|s| (s.name.as_str(), s.kind)).collect();
        assert_eq!(names, [("a", Kind::File), ("b", Kind::Dir), ("c", Kind::Dir)]);
    }

    /// Keys and prefixes from a server that ignores the prefix or the delimiter.
    fn hostile_key() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            "d/[a-c./\\x00]{0,6}",
            "[a-d/]{0,4}",
            "d/\\PC{0,300}",
            proptest::strategy::Just("d/".to_string()),
        ]
    }

    proptest::proptest! {
        /// Whatever a page holds, each entry is a name the kernel can take, in order.
        #[test]
        fn any_page_gives_only_usable_names(
            keys in proptest::collection::vec(hostile_key(), 0..20),
            prefixes in proptest::collection::vec(hostile_key(), 0..10),
        ) {
            let page = ListPage {
                objects: keys.iter().map(|k| obj(k)).collect(),
                prefixes,
                next: None,
            };
            let seen = page_entries("d/", &page, &[]);
            for s in &seen {
                proptest::prop_assert!(unusable_name(&s.name).is_none(), "{:?}", s.name);
            }
            proptest::prop_assert!(seen.windows(2).all(|w| w[0].name <= w[1].name));
            let _ = page_times("d/", &page);
        }
    }
}
