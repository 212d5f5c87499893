//! Directory handles: readdir streams LIST pages into entries and the metadata cache.
//! Pages are listed a little ahead of the reader, and the HEADs for each page's metadata
//! start the moment it arrives, so the HEADs of consecutive pages overlap.

use super::attr::Kind;
use super::listing::{DirEntry, DirStream, ListState};
use super::tree::ROOT_INO;
use super::{Errno, Fs, FsResult, listing};
use crate::store::StoreResult;
use listing::ListedPage;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Pages listed ahead of the page being read (each at most 1,000 entries and their HEADs).
const PAGES_AHEAD: usize = 2;

impl Fs {
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let key = {
            let tree = self.tree();
            let n = tree.get(ino).ok_or(Errno(libc::ENOENT))?;
            if n.attr.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            n.key.clone()
        };
        Ok(self.handles.open_dir(DirStream::new(ino, key)))
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.release_dir(fh);
    }

    /// Entries from `offset` on (as many as one page holds); empty at the end. Offsets 1
    /// and 2 are `.` and `..`.
    pub async fn readdir(self: &Arc<Self>, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let stream = self.handles.dir(fh).ok_or(Errno(libc::EBADF))?;
        let mut s = stream.lock().await;
        let mut out = Vec::new();
        if offset < 2 {
            let parent = self.tree().get(ino).map_or(ROOT_INO, |n| n.parent);
            if offset < 1 {
                out.push(DirEntry {
                    ino,
                    name: ".".into(),
                    kind: Kind::Dir,
                    next_offset: 1,
                });
            }
            out.push(DirEntry {
                ino: parent,
                name: "..".into(),
                kind: Kind::Dir,
                next_offset: 2,
            });
        }
        let offset = offset.max(listing::FIRST_LISTING_OFFSET);
        if offset < s.base {
            s.restart();
        }
        // Advance page by page until the page that holds `offset`.
        while offset >= s.end_offset() && s.state != ListState::Done {
            self.next_dir_page(&mut s).await?;
        }
        let from = (offset - s.base) as usize;
        out.extend(s.entries.iter().skip(from).cloned());
        self.note_dir_read(ino);
        Ok(out)
    }

    /// Replaces the stream's entries with its next page.
    pub(super) async fn next_dir_page(self: &Arc<Self>, s: &mut DirStream) -> FsResult<()> {
        let new_base = s.end_offset();
        if s.state == ListState::Start {
            self.prefetch_siblings(s.ino);
            self.wait_for_prefetch(s.ino).await;
        }
        let now = Instant::now();
        let until = now + self.config.metadata_ttl;
        let cached = {
            let tree = self.tree();
            let n = tree.get(s.ino).ok_or(Errno(libc::ENOENT))?;
            (s.state == ListState::Start && n.listed_until.is_some_and(|t| t > now)).then(|| {
                n.children
                    .iter()
                    .map(|(name, ino)| (name.clone(), *ino))
                    .collect::<Vec<_>>()
            })
        };
        let entries: Vec<(String, u64, Kind)> = if let Some(children) = cached {
            // A fresh complete listing is in the cache: no LIST, and HEADs only for
            // entries whose metadata is not in yet (a lookup's listing of the directory).
            s.state = ListState::Done;
            let inos: Vec<u64> = children.iter().map(|(_, ino)| *ino).collect();
            self.load_metadata(&inos).await;
            let tree = self.tree();
            children
                .into_iter()
                .filter_map(|(name, ino)| tree.get(ino).map(|n| (name, ino, n.attr.kind)))
                .collect()
        } else if s.state == ListState::More || s.state == ListState::Start {
            if s.state == ListState::Start {
                s.changes_at_start = self.tree().dir_changes(s.ino);
                s.pages = Some(self.list_ahead(s.ino, s.key.clone()));
            }
            let listed = match s.pages.as_mut() {
                Some(pages) => pages.recv().await,
                None => None,
            };
            let listed = match listed {
                Some(Ok(listed)) => listed,
                failed => {
                    // The next readdir starts the listing again.
                    s.restart();
                    return Err(match failed {
                        Some(Err(e)) => self.fail("LIST", &s.key, e),
                        _ => Errno(libc::EIO),
                    });
                }
            };
            let ListedPage {
                page,
                hidden_at_start,
                heads,
                last,
            } = listed;
            let mut seen = listing::page_entries(&s.key, &page, self.resolved.profile.hidden_prefixes);
            self.drop_hidden(&s.key, &mut seen, &hidden_at_start);
            let (marker, newest) = listing::page_times(&s.key, &page);
            let mut shown = Vec::with_capacity(seen.len());
            {
                let mut tree = self.tree();
                tree.note_dir_listing(s.ino, marker, newest);
                for e in &seen {
                    let held = |ino| self.handles.has_data(ino);
                    if let Some(ino) = tree.upsert_listed(s.ino, e, until, s.changes_at_start, &held) {
                        s.shown.insert(e.name.clone());
                        shown.push((e.name.clone(), ino));
                    }
                }
            }
            // The entries go out with their persisted type and modes.
            self.apply_heads(&heads.await.unwrap_or_default());
            let mut tree = self.tree();
            let mut entries: Vec<(String, u64, Kind)> = shown
                .into_iter()
                .filter_map(|(name, ino)| tree.get(ino).map(|n| (name, ino, n.attr.kind)))
                .collect();
            if last {
                s.state = ListState::Done;
                s.pages = None;
                tree.finish_listing(s.ino, &s.shown, until, s.changes_at_start);
                // Entries that exist only in the mount come last.
                let local: Vec<(String, u64, Kind)> = tree
                    .get(s.ino)
                    .map(|n| {
                        n.children
                            .iter()
                            .filter(|(name, _)| !s.shown.contains(*name))
                            .filter_map(|(name, ino)| tree.get(*ino).map(|c| (name.clone(), *ino, c.attr.kind)))
                            .collect()
                    })
                    .unwrap_or_default();
                entries.extend(local);
            } else {
                s.state = ListState::More;
                tree.note_more_pages(s.ino);
            }
            entries
        } else {
            Vec::new()
        };
        self.prefetch_listings(&entries);
        self.trim_tree();
        s.base = new_base;
        s.entries = entries
            .into_iter()
            .enumerate()
            .map(|(i, (name, ino, kind))| DirEntry {
                ino,
                name,
                kind,
                next_offset: new_base + i as u64 + 1,
            })
            .collect();
        Ok(())
    }

    /// Lists `key` (directory `dir`) in key order, ahead of its reader by at most
    /// [`PAGES_AHEAD`] pages (its segments at once, list_segments.rs), starting the HEADs
    /// of each page's entries as soon as it arrives. Ends at the last page, at an error
    /// (sent on), or when the reader is gone.
    fn list_ahead(self: &Arc<Self>, dir: u64, key: String) -> mpsc::Receiver<StoreResult<ListedPage>> {
        let (pages, reader) = mpsc::channel(PAGES_AHEAD);
        let this = self.clone();
        tokio::spawn(async move {
            let mut in_order = this.pages_in_order(dir, &key);
            let mut first = true;
            while let Some(listed) = in_order.next().await {
                let (segment_page, last) = match listed {
                    Ok(listed) => listed,
                    Err(e) => {
                        let _ = pages.send(Err(e)).await;
                        return;
                    }
                };
                let of_many = !(first && last);
                first = false;
                let (wanted, recalled) = this.keys_wanting_metadata(&key, &segment_page.page, of_many);
                let heads = {
                    let this = this.clone();
                    tokio::spawn(async move {
                        let mut heads = this.head_all(wanted, false).await;
                        heads.extend(recalled);
                        heads
                    })
                };
                let listed = ListedPage {
                    page: segment_page.page,
                    hidden_at_start: segment_page.hidden_at_start,
                    heads,
                    last,
                };
                if pages.send(Ok(listed)).await.is_err() || last {
                    return;
                }
            }
        });
        reader
    }
}
