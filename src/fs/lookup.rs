//! Resolving names: lookups (one LIST, with a HEAD alongside where metadata is kept), and
//! refreshing one entry from the bucket.

use super::attr::{Attr, Kind};
use super::listing::ListingStart;
use super::metadata_version::MetadataVersion;
use super::tree::Seen;
use super::{Errno, Fs, FsResult, names};
use crate::store::StoreError;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

/// What a remote lookup found: the entry, its persisted metadata (from the HEAD), and for a
/// directory the first page of its own listing with what the mount had changed when it
/// was asked for.
pub(super) struct Found {
    seen: Seen,
    /// A file's HEAD, if one was sent: its persisted metadata.
    head: Option<crate::store::ObjectMeta>,
    /// A directory's marker: `Some(None)` it has none, `None` unknown (its HEAD failed).
    marker: Option<Option<crate::store::ObjectMeta>>,
    listing: Option<(crate::store::ListPage, ListingStart)>,
}

impl Fs {
    /// Resolves `name` for the kernel, which then holds a reference to the inode.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let attr = self.find(parent, name).await?;
        self.tree().add_lookup(attr.ino);
        Ok(attr)
    }

    /// `lookup` without the kernel reference (for the core's own resolution of names).
    pub(super) async fn find(&self, parent: u64, name: &str) -> FsResult<Attr> {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        if name.len() > 255 {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        let (parent_key, mut cached, large) = {
            let tree = self.tree();
            let p = tree.get(parent).ok_or(Errno(libc::ENOENT))?;
            if p.attr.kind != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            (p.key.clone(), tree.cached_lookup(parent, name, Instant::now()), p.large)
        };
        // In a directory of many pages, names revalidated one by one add up to a whole
        // listing again (relist_large.rs).
        if cached.is_none() && large && self.relisted_for(parent, &parent_key, name).await {
            cached = self.tree().cached_lookup(parent, name, Instant::now());
        }
        match cached {
            Some(Some(ino)) => {
                // Known from a listing only: its persisted type and modes first.
                self.load_node_metadata(ino).await?;
                return self.node_attr(ino);
            }
            Some(None) => return Err(Errno(libc::ENOENT)),
            None => {}
        }
        if names::unusable_name(name).is_some() {
            return Err(Errno(libc::ENOENT));
        }
        self.trim_tree();
        match self.lookup_remote(parent, &parent_key, name).await? {
            Some(Found {
                seen,
                head,
                marker,
                listing,
            }) => {
                let (ino, attr) = {
                    let mut tree = self.tree();
                    let held = |ino| self.handles.has_data(ino);
                    let ino = tree
                        .upsert_from_bucket(parent, &seen, self.ttl_from_now(), &held)
                        .ok_or(Errno(libc::ENOENT))?;
                    let key = tree.get(ino).ok_or(Errno(libc::ENOENT))?.key.clone();
                    if let Some(h) = &head {
                        tree.apply_head(&key, h, &held);
                    }
                    if seen.kind == Kind::Dir && self.resolved.profile.user_metadata {
                        match &marker {
                            Some(Some(m)) => tree.apply_head(&key, m, &|_| false),
                            Some(None) => tree.apply_missing(&key),
                            None => {}
                        }
                    }
                    (ino, tree.get(ino).ok_or(Errno(libc::ENOENT))?.attr)
                };
                if let Some((page, start)) = listing {
                    let key = format!("{parent_key}{name}/");
                    self.absorb_dir_page(ino, &key, &page, &start);
                }
                Ok(attr)
            }
            None => {
                self.tree().remember_missing(parent, name, self.ttl_from_now());
                Err(Errno(libc::ENOENT))
            }
        }
    }

    /// One round trip. A small directory is listed whole (one page): the answer for every
    /// sibling is then cached too, so creating many files in one directory costs one LIST
    /// per metadata TTL, not one per name. In a large directory a LIST of `prefix=name`
    /// with delimiter `/` finds the file, the directory and its marker at once. Where the
    /// provider keeps user metadata, a HEAD runs alongside for the file's persisted mode,
    /// owner, mtime and symlink type. A third request lists `name/` itself: if `name` is a
    /// directory, the next component of the path is then answered from that listing, so
    /// opening `a/b/c` cold costs one round trip in all, not one per component. It is not
    /// sent for a name last seen as a file (a revalidation after the metadata TTL).
    ///
    /// A revalidation sends no HEAD where the listings can vouch for what the mount holds:
    /// none of a file whose metadata a HEAD read from the very version listed (same ETag
    /// and LastModified), none of a file of a directory's name (the directory hides it),
    /// none of a directory's marker that its own listing shows unchanged (or still
    /// missing). A listing that shows another version is followed by the HEAD, a second
    /// round trip.
    pub(super) async fn lookup_remote(&self, parent: u64, parent_key: &str, name: &str) -> FsResult<Option<Found>> {
        let key = format!("{parent_key}{name}");
        let dir_key = format!("{key}/");
        let (whole_dir, child, child_kind, read_version, marker_read) = {
            let tree = self.tree();
            let child = tree.get(parent).and_then(|p| p.children.get(name)).copied();
            (
                !tree.get(parent).is_some_and(|p| p.large),
                child,
                child.and_then(|c| tree.get(c)).map(|n| n.attr.kind),
                child.and_then(|c| tree.version_read_by_head(c)),
                child.and_then(|c| tree.marker_read(c)),
            )
        };
        let known_file = child_kind == Some(Kind::File);
        let known_dir = child_kind == Some(Kind::Dir);
        let file_head_now = self.may_carry_metadata(Kind::File) && read_version.is_none() && !known_dir;
        let marker_kept = self.may_carry_metadata(Kind::Dir);
        let marker_head_now = marker_kept && !known_file && marker_read.is_none();
        let list_prefix = if whole_dir { parent_key } else { key.as_str() };
        let start = self.listing_start(parent, list_prefix);
        let child_start = ListingStart {
            changes: child.map_or(0, |c| self.tree().dir_changes(c)),
            hidden: self.deferred.hidden_under(&dir_key),
        };
        let list = self.first_page(list_prefix);
        // A directory a mount listed large is listed by its readdir in segments at once
        // (list_segments.rs): its lookup asks only whether anything is under it. One key
        // comes in one round trip; a page of 1,000 takes four or five on a long link,
        // in TCP slow start.
        let child_keys = if self.remembered.has_listing_splits(&dir_key) {
            1
        } else {
            1000
        };
        let child_list = async {
            if known_file {
                return Ok(None);
            }
            self.first_page_of(&dir_key, child_keys).await.map(Some)
        };
        let head = self.head_if_metadata(&key, file_head_now);
        // A directory's persisted metadata is in its marker.
        let marker_head = self.head_if_metadata(&dir_key, marker_head_now);
        let (page, head, child_page, marker) = futures::join!(list, head, child_list, marker_head);
        let mut page = page.map_err(|e| self.fail("LIST", &key, e))?;
        let child_page = child_page.map_err(|e| self.fail("LIST", &dir_key, e))?;
        if whole_dir {
            self.absorb_dir_page(parent, parent_key, &page, &start);
            // Keys sort by byte: `name/` is the last spelling of `name` a page can hold.
            let last = page
                .objects
                .last()
                .map(|o| o.key.as_str())
                .max(page.prefixes.last().map(String::as_str));
            let covered = page.next.is_none() || last.is_some_and(|l| dir_key.as_str() <= l);
            if !covered {
                self.tree().note_more_pages(parent);
                page = self.first_page(&key).await.map_err(|e| self.fail("LIST", &key, e))?;
            } else {
                // The page answered: nothing beyond it can be `name`.
                page.next = None;
            }
        }
        let hidden = self.resolved.profile.hidden_prefixes.iter().any(|h| dir_key == *h);
        // Where `name/` was listed, that listing says whether anything is under it: keys
        // whose deletes are on their way (a marker of a directory just removed) are not.
        let deleting = |key: &str| child_start.hidden.contains(key) || self.deferred.is_hidden(key);
        let child_listed = child_page
            .as_ref()
            .map(|c| c.objects.iter().any(|o| !deleting(&o.key)) || !c.prefixes.is_empty() || c.next.is_some());
        // A directory the mount keeps whatever the bucket says (made here, or holding one
        // made here) hides a file of its name as a directory of the bucket does.
        let pinned = self.tree().pinned_dir(parent, name).is_some();
        let listed_dir = child_listed.unwrap_or_else(|| page.prefixes.contains(&dir_key));
        let is_dir = !hidden && (listed_dir || pinned);
        if is_dir {
            let seen = Seen {
                name: name.to_string(),
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                etag: None,
            };
            return Ok(Some(Found {
                seen,
                head: None,
                // A failed HEAD of the marker leaves default modes (a later lookup asks again).
                marker: match (child_page.as_ref(), marker_read.filter(|_| marker_kept)) {
                    (Some(c), Some(read)) => {
                        // The marker as listed under `name/` (keys sort it first).
                        let listed = c.objects.iter().find(|o| o.key == dir_key && !deleting(&o.key));
                        self.marker_as_listed(&dir_key, listed, read).await
                    }
                    _ => marker.ok(),
                },
                listing: child_page.map(|c| (c, child_start)),
            }));
        }
        let head = head.map_err(|e| self.fail("HEAD", &key, e))?;
        if start.hidden.contains(&key) || self.deferred.is_hidden(&key) {
            return Ok(None);
        }
        let listed = page.objects.iter().find(|o| o.key == key);
        let vouched = |o: &crate::store::ObjectMeta| {
            read_version
                .as_ref()
                .is_some_and(|v| v.is(o.etag.as_deref(), o.last_modified))
        };
        let head = match (head, listed) {
            (None, Some(o)) if !file_head_now && self.may_carry_metadata(Kind::File) && !vouched(o) => {
                // Not the version whose metadata the mount holds: read this one's.
                self.head_if_metadata(&key, true)
                    .await
                    .map_err(|e| self.fail("HEAD", &key, e))?
            }
            (head, _) => head,
        };
        let meta = match (head, listed) {
            (Some(h), _) => {
                self.remembered.remember(&h);
                Some((h.clone(), Some(h)))
            }
            (None, Some(o)) => Some((o.clone(), None)),
            (None, None) => None,
        };
        Ok(meta.map(|(o, head)| {
            let seen = Seen {
                name: name.to_string(),
                kind: Kind::File,
                size: o.size,
                mtime: o.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
                etag: o.etag.clone(),
            };
            Found {
                seen,
                head,
                marker: None,
                listing: None,
            }
        }))
    }

    /// A directory's marker as its own listing shows it (`listed`), where the mount had
    /// read it (`read`: `None` there was none): `None` unchanged, `Some(None)` gone, or
    /// another version's HEAD (`None` if that failed: the next lookup asks again).
    async fn marker_as_listed(
        &self,
        dir_key: &str,
        listed: Option<&crate::store::ObjectMeta>,
        read: Option<MetadataVersion>,
    ) -> Option<Option<crate::store::ObjectMeta>> {
        match (listed, read) {
            (Some(m), Some(v)) if v.is(m.etag.as_deref(), m.last_modified) => None,
            (Some(_), _) => self.head_if_metadata(dir_key, true).await.ok(),
            (None, None) => None,
            (None, Some(_)) => Some(None),
        }
    }

    /// The HEAD of `key` if `wanted`; `None` if there is no such object.
    async fn head_if_metadata(
        &self,
        key: &str,
        wanted: bool,
    ) -> crate::store::StoreResult<Option<crate::store::ObjectMeta>> {
        if !wanted {
            return Ok(None);
        }
        self.stats.head_requests.fetch_add(1, Ordering::Relaxed);
        match self.store.head(key).await {
            Ok(m) => Ok(Some(m)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Re-reads a file's attributes with one HEAD.
    pub(super) async fn refresh_file(&self, ino: u64, key: &str) -> FsResult<Attr> {
        self.stats.head_requests.fetch_add(1, Ordering::Relaxed);
        let head = self.store.head(key).await.map_err(|e| self.fail("HEAD", key, e))?;
        let mut tree = self.tree();
        let until = Instant::now() + self.config.metadata_ttl;
        let defaults = tree.defaults;
        let node = tree.get_mut(ino).ok_or(Errno(libc::ENOENT))?;
        if node.etag != head.etag {
            let mtime = head.last_modified.unwrap_or(node.attr.mtime());
            // Another object now: the old one's persisted mode, owner and type say nothing
            // of it; only its own metadata counts.
            node.attr = Attr::new(ino, Kind::File, head.size, mtime, &defaults);
        }
        node.attr.size = head.size;
        node.metadata_of = MetadataVersion::of(head.etag.as_deref(), head.last_modified, true);
        node.etag = head.etag;
        node.attr
            .apply_metadata(&node.key, &head.metadata, defaults.keep_special_modes);
        node.metadata_loaded = true;
        node.fresh_until = until;
        Ok(node.attr)
    }
}
