//! Directory listings: LIST pages turned into entries as they arrive, so the first entries
//! of a huge directory are answered after one request, and every page feeds the metadata
//! cache (so `ls -l` needs no HEAD per entry).

use super::attr::Kind;
use super::names::unusable_name;
use super::tree::Seen;
use crate::store::{ListPage, ListRequest};
use std::collections::HashSet;
use std::time::SystemTime;

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
    pub token: Option<String>,
    /// Where the listing stands: not started, in progress (`token`), or complete.
    pub state: ListState,
    /// Names shown so far, to reconcile the cache once the listing is complete.
    pub shown: HashSet<String>,
    /// The directory's change count when the listing started (see `Tree::finish_listing`).
    pub changes_at_start: u64,
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
            token: None,
            state: ListState::Start,
            shown: HashSet::new(),
            changes_at_start: 0,
        }
    }

    pub fn restart(&mut self) {
        *self = DirStream::new(self.ino, std::mem::take(&mut self.key));
    }

    pub fn request(&self) -> ListRequest {
        ListRequest {
            prefix: self.key.clone(),
            delimiter: Some("/".into()),
            continuation: self.token.clone(),
            start_after: None,
            max_keys: Some(1000),
        }
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

fn warn_unusable(key: &str, why: &str) {
    tracing::warn!("skipping key {key:?}: it cannot be a file name ({why})");
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
}
