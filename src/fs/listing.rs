//! Directory handles: readdir streams LIST pages into entries and the metadata cache.

use super::*;

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
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(tokio::sync::Mutex::new(DirStream::new(ino, key)));
        self.dirs.lock().unwrap().insert(fh, stream);
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Entries from `offset` on (as many as one page holds); empty at the end. Offsets 1
    /// and 2 are `.` and `..`.
    pub async fn readdir(self: &Arc<Self>, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let stream = self.dirs.lock().unwrap().get(&fh).cloned().ok_or(Errno(libc::EBADF))?;
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
        let offset = offset.max(dir::FIRST_LISTING_OFFSET);
        if offset < s.base {
            s.restart();
        }
        // Advance page by page until the page that holds `offset`.
        while offset >= s.end_offset() && s.state != ListState::Done {
            self.next_dir_page(&mut s).await?;
        }
        let from = (offset - s.base) as usize;
        out.extend(s.entries.iter().skip(from).cloned());
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
            // A fresh complete listing is in the cache: no request.
            s.state = ListState::Done;
            let tree = self.tree();
            children
                .into_iter()
                .filter_map(|(name, ino)| tree.get(ino).map(|n| (name, ino, n.attr.kind)))
                .collect()
        } else if s.state == ListState::More || s.state == ListState::Start {
            if s.state == ListState::Start {
                s.changes_at_start = self.tree().dir_changes(s.ino);
            }
            self.stats.list_requests.fetch_add(1, Ordering::Relaxed);
            let hidden_at_start = self.hidden_under(&s.key);
            let page = self
                .store
                .list_page(&s.request())
                .await
                .map_err(|e| self.fail("LIST", &s.key, e))?;
            let mut seen = dir::page_entries(&s.key, &page, self.resolved.profile.hidden_prefixes);
            self.drop_hidden(&s.key, &mut seen, &hidden_at_start);
            let mut tree = self.tree();
            let mut entries = Vec::with_capacity(seen.len());
            for e in &seen {
                if let Some(ino) = tree.upsert_listed(s.ino, e, until, s.changes_at_start) {
                    s.shown.insert(e.name.clone());
                    let kind = tree.get(ino).map_or(e.kind, |n| n.attr.kind);
                    entries.push((e.name.clone(), ino, kind));
                }
            }
            s.token = page.next;
            if s.token.is_none() {
                s.state = ListState::Done;
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
}
