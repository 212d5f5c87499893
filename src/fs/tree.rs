//! The inode table and metadata cache: which names exist, under which inode, with which
//! attributes, and until when that knowledge is trusted.
//!
//! Inode numbers are stable for the life of the mount: one key always maps to one inode.

use super::attr::{Attr, Defaults, Kind};
use super::metadata_version::MetadataVersion;
use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

pub const ROOT_INO: u64 = 1;

#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub name: String,
    /// Full object key; directories end with `/` (the root is the source's prefix).
    pub key: String,
    pub attr: Attr,
    pub etag: Option<String>,
    /// Attributes are trusted until then (the metadata TTL).
    pub fresh_until: Instant,
    /// The user metadata has been read (HEAD): mode, owner and mtime are the persisted ones.
    pub metadata_loaded: bool,
    /// The object version that metadata belongs to, a directory's marker's (see
    /// `metadata_version.rs`); a listing that shows a file rewritten in place unloads it.
    pub metadata_of: Option<MetadataVersion>,
    /// Directories: where the mtime comes from (a listing may only replace a guess).
    pub dir_mtime: DirMtime,
    /// Directories: known children by name.
    pub children: BTreeMap<String, u64>,
    /// Directories: the children map is the whole listing, trusted until then.
    pub listed_until: Option<Instant>,
    /// Exists in the mount but not (yet) in the bucket: a new file not uploaded, or an
    /// empty directory on a provider without markers. Listings never drop it.
    pub local: bool,
    /// Directories made by mkdir where markers are kept: local until the marker is in the
    /// bucket (on its way in the background, or its put failed), whatever files under it
    /// reach the bucket first; without the marker it would go with their last key.
    pub awaits_marker: bool,
    /// The ETag whose data the kernel's page cache holds for this file.
    pub kernel_cache_etag: Option<String>,
    /// Directories: the first LIST page did not hold the whole listing; lookups of single
    /// names then list just that name.
    pub large: bool,
    /// Directories: changes made through the mount. A listing that started before one
    /// cannot be the whole truth: it would drop what was just created here.
    pub changes: u64,
    /// The parent's change count when a change through the mount put this node there (0
    /// for nodes learned from the bucket): a listing that started before it may omit it.
    pub placed_at: u64,
    /// References the kernel holds (entries it was given minus those it forgot): a node
    /// at zero may be dropped from the table to keep it within its budget.
    pub lookups: u64,
}

impl Node {
    /// This mount wrote the object's version `etag` (an upload, a symlink, a rename, a
    /// chmod's copy): its metadata is the mount's own; its LastModified is unknown until
    /// a listing shows it.
    pub fn written_here(&mut self, etag: String) {
        self.etag = Some(etag);
        self.metadata_of = None;
    }
}

/// Where a directory's mtime comes from, best last. An object store has no directory
/// mtime: the marker's persisted `mtime` or its LastModified is the real one; without a
/// marker, the newest entry seen in the directory's listing; before any listing, the
/// mount time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirMtime {
    MountTime,
    NewestEntry,
    /// From the marker object, or set through the mount: listings leave it alone.
    Settled,
}

/// What a listing says exists under a directory.
#[derive(Debug, Clone)]
pub struct Seen {
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
}

pub struct Tree {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<String, u64>,
    negative: HashMap<(u64, String), Instant>,
    /// Nodes that had no kernel reference at some point, oldest first: where eviction
    /// looks (each is checked again before it goes).
    unreferenced: std::collections::VecDeque<u64>,
    next_ino: u64,
    pub defaults: Defaults,
    /// The mtime of a directory nothing better is known of.
    mounted_at: SystemTime,
}

/// Negative entries kept at most; beyond it the oldest half is dropped.
const NEGATIVE_BUDGET: usize = 100_000;

impl Tree {
    pub fn new(root_key: &str, defaults: Defaults) -> Tree {
        let now = Instant::now();
        let mounted_at = SystemTime::now();
        let root = Node {
            parent: ROOT_INO,
            name: String::new(),
            key: root_key.to_string(),
            attr: Attr::new(ROOT_INO, Kind::Dir, 0, mounted_at, &defaults),
            etag: None,
            fresh_until: now + std::time::Duration::from_secs(365 * 24 * 3600),
            metadata_loaded: true,
            metadata_of: None,
            dir_mtime: DirMtime::MountTime,
            children: BTreeMap::new(),
            listed_until: None,
            local: true,
            awaits_marker: false,
            kernel_cache_etag: None,
            lookups: 1,
            large: false,
            changes: 0,
            placed_at: 0,
        };
        Tree {
            nodes: HashMap::from([(ROOT_INO, root)]),
            by_key: HashMap::from([(root_key.to_string(), ROOT_INO)]),
            negative: HashMap::new(),
            unreferenced: std::collections::VecDeque::new(),
            next_ino: ROOT_INO + 1,
            defaults,
            mounted_at,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn child_key(&self, parent: u64, name: &str, kind: Kind) -> Option<String> {
        let p = self.nodes.get(&parent)?;
        Some(match kind {
            Kind::Dir => format!("{}{name}/", p.key),
            Kind::File | Kind::Symlink => format!("{}{name}", p.key),
        })
    }

    /// A cached answer for `name` under `parent`: `Some(Some(ino))` exists, `Some(None)`
    /// known not to exist, `None` unknown (ask the store).
    pub fn cached_lookup(&self, parent: u64, name: &str, now: Instant) -> Option<Option<u64>> {
        let p = self.nodes.get(&parent)?;
        if let Some(&ino) = p.children.get(name) {
            let n = &self.nodes[&ino];
            return (n.local || n.fresh_until > now).then_some(Some(ino));
        }
        if p.listed_until.is_some_and(|t| t > now) {
            return Some(None);
        }
        match self.negative.get(&(parent, name.to_string())) {
            Some(&until) if until > now => Some(None),
            _ => None,
        }
    }

    pub fn remember_missing(&mut self, parent: u64, name: &str, until: Instant) {
        if self.negative.len() >= NEGATIVE_BUDGET {
            let now = Instant::now();
            self.negative.retain(|_, t| *t > now);
            if self.negative.len() >= NEGATIVE_BUDGET {
                self.negative.clear();
            }
        }
        let child = self.nodes.get(&parent).and_then(|p| p.children.get(name).copied());
        if let Some(ino) = child {
            if self.holds_local(ino) {
                // A local entry, or a directory holding one, is never hidden by a remote
                // listing.
                return;
            }
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children.remove(name);
            }
        }
        self.negative.insert((parent, name.to_string()), until);
    }

    /// `upsert` for an entry of a listing that started when `parent`'s change count was
    /// `changes_at_start`: if changes were made since, a name removed through the mount
    /// meanwhile (still remembered as missing) is not brought back by the older listing,
    /// and an entry placed meanwhile (an upload that replaced the object, a rename) keeps
    /// the size and ETag the mount gave it rather than the listing's older ones.
    /// A file listed under the name of a directory that the mount keeps whatever the
    /// bucket says (`pinned_dir`), or that was put there since the listing started, is
    /// hidden by it: the directory's inode is returned, what the name shows.
    /// `held`: see `upsert_from_bucket`.
    pub fn upsert_listed(
        &mut self,
        parent: u64,
        seen: &Seen,
        until: Instant,
        changes_at_start: u64,
        held: &dyn Fn(u64) -> bool,
    ) -> Option<u64> {
        if seen.kind != Kind::Dir
            && let Some(dir) = self.child_dir(parent, &seen.name)
            && (self.holds_local(dir) || self.nodes.get(&dir).is_some_and(|d| d.placed_at > changes_at_start))
        {
            return Some(dir);
        }
        let overtaken = self.dir_changes(parent) != changes_at_start;
        let removed = self
            .negative
            .get(&(parent, seen.name.clone()))
            .is_some_and(|t| *t > Instant::now());
        if overtaken && removed {
            return None;
        }
        if let Some(&ino) = self
            .child_key(parent, &seen.name, seen.kind)
            .and_then(|key| self.by_key.get(&key))
            && self.nodes.get(&ino).is_some_and(|n| n.placed_at > changes_at_start)
        {
            return Some(ino);
        }
        self.upsert_from_bucket(parent, seen, until, held)
    }

    /// `upsert` for what the bucket says of an entry (a listing, a lookup): a file `held`
    /// by the mount (it has local data: open for writing, or changes not uploaded yet)
    /// keeps the size and version the mount gave it; the bucket's are older than them.
    pub fn upsert_from_bucket(
        &mut self,
        parent: u64,
        seen: &Seen,
        until: Instant,
        held: &dyn Fn(u64) -> bool,
    ) -> Option<u64> {
        let keep_attrs = seen.kind != Kind::Dir
            && self
                .child_key(parent, &seen.name, seen.kind)
                .and_then(|key| self.by_key.get(&key))
                .is_some_and(|&ino| held(ino));
        self.upsert_inner(parent, seen, until, keep_attrs)
    }

    /// A file the mount holds data for before anything was listed (journaled data a
    /// crashed run left): its node, and nodes for its directories, under the root. New
    /// directories are local until the file reaches the bucket (`now_in_bucket`). `None`
    /// for a key outside the root or with an empty name.
    pub fn place_file(&mut self, key: &str, size: u64, in_bucket: Option<&str>, until: Instant) -> Option<u64> {
        let root_key = self.nodes.get(&ROOT_INO)?.key.clone();
        let rest = key.strip_prefix(root_key.as_str())?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        let name = parts.pop().filter(|n| !n.is_empty())?;
        let mut parent = ROOT_INO;
        for dir in parts {
            if dir.is_empty() {
                return None;
            }
            let seen = Seen {
                name: dir.to_string(),
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::now(),
                etag: None,
            };
            let known = self
                .child_key(parent, dir, Kind::Dir)
                .is_some_and(|k| self.by_key.contains_key(&k));
            let ino = self.upsert(parent, &seen, until)?;
            if !known {
                self.nodes.get_mut(&ino)?.local = true;
            }
            parent = ino;
        }
        let seen = Seen {
            name: name.to_string(),
            kind: Kind::File,
            size,
            mtime: SystemTime::now(),
            etag: in_bucket.map(String::from),
        };
        let ino = self.upsert(parent, &seen, until)?;
        let n = self.nodes.get_mut(&ino)?;
        n.attr.size = size;
        n.etag = in_bucket.map(String::from);
        n.local = in_bucket.is_none();
        Some(ino)
    }

    /// Records that `seen` exists under `parent`; returns its inode.
    pub fn upsert(&mut self, parent: u64, seen: &Seen, until: Instant) -> Option<u64> {
        self.upsert_inner(parent, seen, until, false)
    }

    /// `upsert`; `keep_attrs`: a file's size, version and times stay as they are.
    fn upsert_inner(&mut self, parent: u64, seen: &Seen, until: Instant, keep_attrs: bool) -> Option<u64> {
        let key = self.child_key(parent, &seen.name, seen.kind)?;
        self.negative.remove(&(parent, seen.name.clone()));
        let ino = match self.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.by_key.insert(key.clone(), ino);
                self.unreferenced.push_back(ino);
                ino
            }
        };
        let defaults = self.defaults;
        // A listing gives a directory no time of its own.
        let mtime = match seen.kind {
            Kind::Dir => self.mounted_at,
            _ => seen.mtime,
        };
        let node = self.nodes.entry(ino).or_insert_with(|| Node {
            parent,
            name: seen.name.clone(),
            key: key.clone(),
            attr: Attr::new(ino, seen.kind, seen.size, mtime, &defaults),
            etag: None,
            fresh_until: until,
            metadata_loaded: false,
            metadata_of: None,
            dir_mtime: DirMtime::MountTime,
            children: BTreeMap::new(),
            listed_until: None,
            local: false,
            awaits_marker: false,
            kernel_cache_etag: None,
            lookups: 0,
            large: false,
            changes: 0,
            placed_at: 0,
        });
        if !node.local && !keep_attrs && node.attr.kind != Kind::Dir {
            let changed = node.etag.is_some() && node.etag != seen.etag;
            if changed {
                // Another object now: the old one's persisted mode, owner and type (a
                // symlink's S_IFLNK) say nothing of it until its own metadata is read.
                node.attr = Attr::new(ino, seen.kind, seen.size, seen.mtime, &defaults);
                node.metadata_loaded = false;
                node.metadata_of = None;
            } else if node.metadata_loaded {
                match &node.metadata_of {
                    // Rewritten in place (a chmod elsewhere keeps a single-part object's
                    // ETag): read again before it is answered (the mode stays meanwhile).
                    Some(v) if v.rewritten_as(seen.etag.as_deref(), seen.mtime) => node.metadata_loaded = false,
                    Some(v) if seen.etag.as_deref() == Some(v.etag()) => {}
                    // Written here: the first listing of the version gives its LastModified.
                    _ => node.metadata_of = MetadataVersion::of(seen.etag.as_deref(), Some(seen.mtime), false),
                }
            }
            node.attr.size = seen.size;
            if !node.metadata_loaded {
                // What the listing showed, until the metadata is read (and what an earlier
                // mount's HEAD is recalled by).
                node.attr.set_mtime(seen.mtime);
            }
            node.etag = seen.etag.clone();
        }
        node.fresh_until = until;
        node.parent = parent;
        node.name = seen.name.clone();
        // A directory and a file of one name: the directory wins, the file is hidden.
        let existing = self.nodes.get(&parent)?.children.get(&seen.name).copied();
        let keep_existing = existing
            .is_some_and(|other| other != ino && seen.kind != Kind::Dir && self.nodes[&other].attr.kind == Kind::Dir);
        if !keep_existing {
            self.nodes.get_mut(&parent)?.children.insert(seen.name.clone(), ino);
        }
        Some(ino)
    }

    /// A listing of `dir` took more than one page: its names are revalidated as a large
    /// directory's (`relist_large.rs`), not by listing its first page again.
    pub fn note_more_pages(&mut self, dir: u64) {
        if let Some(n) = self.nodes.get_mut(&dir) {
            n.large = true;
        }
    }

    /// A listing of directory `dir` arrived: `marker` is its marker's LastModified if the
    /// page held the marker, `newest` the newest LastModified among its entries.
    pub fn note_dir_listing(&mut self, dir: u64, marker: Option<SystemTime>, newest: Option<SystemTime>) {
        let Some(n) = self.nodes.get_mut(&dir) else { return };
        match (n.dir_mtime, marker, newest) {
            (DirMtime::Settled, _, _) => {}
            (_, Some(marker), _) => {
                n.attr.set_mtime(marker);
                n.dir_mtime = DirMtime::Settled;
            }
            (DirMtime::MountTime, None, Some(newest)) => {
                n.attr.set_mtime(newest);
                n.dir_mtime = DirMtime::NewestEntry;
            }
            (DirMtime::NewestEntry, None, Some(newest)) if newest > n.attr.mtime() => n.attr.set_mtime(newest),
            _ => {}
        }
    }

    /// The HEAD of `key` (a file, or a directory's marker) answered `head`: its persisted
    /// mode, owner, mtime and symlink type apply to the node, unless the node stands for
    /// another version of the object by now (or for local changes: `held`, see
    /// `upsert_from_bucket`).
    pub fn apply_head(&mut self, key: &str, head: &crate::store::ObjectMeta, held: &dyn Fn(u64) -> bool) {
        let keep_special = self.defaults.keep_special_modes;
        let Some(&ino) = self.by_key.get(key) else { return };
        let Some(n) = self.nodes.get_mut(&ino) else { return };
        if n.local || (n.attr.kind != Kind::Dir && held(ino)) {
            return;
        }
        if n.attr.kind == Kind::Dir {
            n.attr.set_mtime(head.last_modified.unwrap_or(n.attr.mtime()));
            n.attr.apply_metadata(key, &head.metadata, keep_special);
            n.dir_mtime = DirMtime::Settled;
            n.metadata_of = MetadataVersion::of(head.etag.as_deref(), head.last_modified, true);
        } else {
            if n.etag.is_some() && n.etag != head.etag {
                return;
            }
            n.etag = head.etag.clone();
            n.attr.size = head.size;
            n.attr.apply_metadata(key, &head.metadata, keep_special);
            n.metadata_of = MetadataVersion::of(head.etag.as_deref(), head.last_modified, true);
        }
        n.metadata_loaded = true;
    }

    /// The HEAD of `key` found nothing: a directory without a marker has no persisted
    /// metadata to wait for (a file's object is gone: a lookup will tell).
    pub fn apply_missing(&mut self, key: &str) {
        if let Some(n) = self.by_key.get(key).and_then(|ino| self.nodes.get_mut(ino))
            && n.attr.kind == Kind::Dir
        {
            n.metadata_loaded = true;
            n.metadata_of = None;
        }
    }

    /// A listing shows `key` with this ETag and LastModified: the node holds that
    /// version's metadata, not rewritten in place since (a directory's: whatever its
    /// marker's). Nothing to HEAD then.
    pub fn metadata_known(&self, key: &str, etag: Option<&str>, modified: SystemTime) -> bool {
        self.by_key
            .get(key)
            .and_then(|ino| self.nodes.get(ino))
            .is_some_and(|n| {
                let rewritten = || n.metadata_of.as_ref().is_some_and(|v| v.rewritten_as(etag, modified));
                let file_known = n.etag.as_deref() == etag && !rewritten();
                n.local || (n.metadata_loaded && (n.attr.kind == Kind::Dir || file_known))
            })
    }

    /// The version of file `ino` whose metadata a HEAD read, if the node still holds it: a
    /// listing that shows this version needs no HEAD to vouch for the metadata.
    pub fn version_read_by_head(&self, ino: u64) -> Option<MetadataVersion> {
        let n = self.nodes.get(&ino).filter(|n| n.attr.kind == Kind::File)?;
        let v = n.metadata_of.as_ref()?;
        let current = n.metadata_loaded && !n.local && n.etag.as_deref() == Some(v.etag());
        (current && v.by_head()).then(|| v.clone())
    }

    /// Directory `ino`'s marker as its HEAD found it: `Some(None)` none, `None` unknown
    /// (not a directory, not read yet, or made here).
    pub fn marker_read(&self, ino: u64) -> Option<Option<MetadataVersion>> {
        let n = self.nodes.get(&ino).filter(|n| n.attr.kind == Kind::Dir)?;
        (n.metadata_loaded && !n.local).then(|| n.metadata_of.clone())
    }

    /// The node of `key` has its persisted metadata, or is local: nothing left to HEAD.
    pub fn metadata_loaded(&self, key: &str) -> bool {
        self.by_key
            .get(key)
            .and_then(|ino| self.nodes.get(ino))
            .is_some_and(|n| n.local || n.metadata_loaded)
    }

    /// Records a change made through the mount under directory `dir`.
    pub fn dir_changed(&mut self, dir: u64) {
        if let Some(d) = self.nodes.get_mut(&dir) {
            d.changes += 1;
        }
    }

    pub fn dir_changes(&self, dir: u64) -> u64 {
        self.nodes.get(&dir).map_or(0, |d| d.changes)
    }

    /// After a complete listing of `parent` that started when its change count was
    /// `changes_at_start`: forget children it did not show (unless they are local or were
    /// placed here since it started), and trust the listing until `until`, unless the
    /// table dropped some of what it showed meanwhile (its budget): a name missing from
    /// the children is then not known to be missing from the bucket.
    pub fn finish_listing(
        &mut self,
        parent: u64,
        shown: &std::collections::HashSet<String>,
        until: Instant,
        changes_at_start: u64,
    ) {
        let Some(p) = self.nodes.get(&parent) else { return };
        let gone: Vec<String> = p
            .children
            .iter()
            .filter(|(name, ino)| {
                let n = &self.nodes[*ino];
                !shown.contains(*name) && n.placed_at <= changes_at_start && !self.holds_local(**ino)
            })
            .map(|(name, _)| name.clone())
            .collect();
        if let Some(p) = self.nodes.get_mut(&parent) {
            for name in gone {
                p.children.remove(&name);
            }
            if shown.iter().all(|name| p.children.contains_key(name)) {
                p.listed_until = Some(until);
            }
        }
    }

    /// Removes `name` from `parent`'s children (the node stays for open handles) and
    /// remembers it as missing.
    pub fn remove_child(&mut self, parent: u64, name: &str, until: Instant) -> Option<u64> {
        self.dir_changed(parent);
        let ino = self.nodes.get_mut(&parent)?.children.remove(name)?;
        self.negative.insert((parent, name.to_string()), until);
        if let Some(n) = self.nodes.get(&ino) {
            let key = n.key.clone();
            if self.by_key.get(&key) == Some(&ino) {
                self.by_key.remove(&key);
            }
        }
        Some(ino)
    }

    /// Moves `ino` to `new_parent`/`new_name`, replacing what was there, and rewrites the
    /// keys of every cached descendant. Inode numbers do not change.
    pub fn move_node(&mut self, ino: u64, new_parent: u64, new_name: &str) -> Option<()> {
        let (old_parent, old_name, old_key, kind) = {
            let n = self.nodes.get(&ino)?;
            (n.parent, n.name.clone(), n.key.clone(), n.attr.kind)
        };
        let new_key = self.child_key(new_parent, new_name, kind)?;
        self.dir_changed(old_parent);
        if let Some(p) = self.nodes.get_mut(&old_parent)
            && p.children.get(&old_name) == Some(&ino)
        {
            p.children.remove(&old_name);
        }
        if let Some(replaced) = self
            .nodes
            .get_mut(&new_parent)?
            .children
            .insert(new_name.to_string(), ino)
            && replaced != ino
            && let Some(r) = self.nodes.get(&replaced)
        {
            let key = r.key.clone();
            self.by_key.remove(&key);
        }
        self.negative.remove(&(new_parent, new_name.to_string()));
        let n = self.nodes.get_mut(&ino)?;
        n.parent = new_parent;
        n.name = new_name.to_string();
        self.rekey(ino, &old_key, &new_key);
        self.placed(ino);
        Some(())
    }

    fn rekey(&mut self, ino: u64, old_prefix: &str, new_prefix: &str) {
        let mut stack = vec![ino];
        while let Some(i) = stack.pop() {
            let Some(n) = self.nodes.get_mut(&i) else { continue };
            let Some(rest) = n.key.strip_prefix(old_prefix) else {
                continue;
            };
            let new_key = format!("{new_prefix}{rest}");
            let old_key = std::mem::replace(&mut n.key, new_key.clone());
            stack.extend(n.children.values().copied());
            if self.by_key.get(&old_key) == Some(&i) {
                self.by_key.remove(&old_key);
            }
            self.by_key.insert(new_key, i);
        }
    }

    /// Every cached node at or under `ino`.
    pub fn descendants(&self, ino: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut stack = vec![ino];
        while let Some(i) = stack.pop() {
            out.push(i);
            if let Some(n) = self.nodes.get(&i) {
                stack.extend(n.children.values().copied());
            }
        }
        out
    }

    /// `ino` reached the bucket through the mount: it and the ancestors made locally for
    /// it are local no more (but those awaiting their marker), and each of them is
    /// `placed` (a listing that started before may not show it yet, and must not drop it).
    /// Those ancestors are directories of the bucket from now on, trusted until `until`
    /// like any other (not for the lifetime a local entry had): they go with their last
    /// key.
    pub fn now_in_bucket(&mut self, ino: u64, until: Instant) {
        let mut at = Some(ino);
        while let Some(i) = at.filter(|i| *i != ROOT_INO) {
            let Some(n) = self.nodes.get_mut(&i) else { break };
            at = Some(n.parent);
            if i != ino && n.awaits_marker {
                continue;
            }
            n.awaits_marker = false;
            let was_local = std::mem::replace(&mut n.local, false);
            if was_local {
                n.fresh_until = until;
                self.placed(i);
            }
        }
    }

    /// The directory `name` under `parent`, if that is what the name shows.
    fn child_dir(&self, parent: u64, name: &str) -> Option<u64> {
        let ino = *self.nodes.get(&parent)?.children.get(name)?;
        (self.nodes.get(&ino)?.attr.kind == Kind::Dir).then_some(ino)
    }

    /// The directory `name` under `parent` if the mount keeps it whatever the bucket says
    /// (`holds_local`): a directory made here, or one holding such an entry.
    pub fn pinned_dir(&self, parent: u64, name: &str) -> Option<u64> {
        self.child_dir(parent, name).filter(|&d| self.holds_local(d))
    }

    /// Whether `ino` exists in the mount whatever the bucket says: it is local (not in the
    /// bucket yet, or a directory of the mount only), or a directory holding such an entry
    /// at any depth (an emptied directory of the bucket keeps a directory made in it).
    pub fn holds_local(&self, ino: u64) -> bool {
        let mut stack = vec![ino];
        while let Some(i) = stack.pop() {
            let Some(n) = self.nodes.get(&i) else { continue };
            if n.local {
                return true;
            }
            stack.extend(n.children.values().copied());
        }
        false
    }

    /// A change through the mount put `ino` where it is (created, moved or uploaded): its
    /// parent's change count moves on, and a listing that started before may omit it.
    pub fn placed(&mut self, ino: u64) {
        let Some(parent) = self.nodes.get(&ino).map(|n| n.parent) else {
            return;
        };
        self.dir_changed(parent);
        let at = self.dir_changes(parent);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.placed_at = at;
        }
    }

    /// The inode that stands for `key`, if any.
    pub fn ino_of(&self, key: &str) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// Whether a node currently stands for `key`.
    pub fn has_key(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// The directories whose whole listing is in the tree (past its TTL or not).
    pub fn listed_dirs(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.attr.kind == Kind::Dir && n.listed_until.is_some())
            .map(|(ino, n)| (*ino, n))
    }

    /// Entries in the table (never zero: the root stays).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The kernel was given an entry for `ino`.
    pub fn add_lookup(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel forgot `count` references to `ino`.
    pub fn forget(&mut self, ino: u64, count: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
            if n.lookups == 0 {
                self.unreferenced.push_back(ino);
            }
        }
    }

    fn evictable(&self, ino: u64) -> bool {
        ino != ROOT_INO
            && self
                .nodes
                .get(&ino)
                .is_some_and(|n| n.lookups == 0 && n.children.is_empty() && !n.local)
    }

    /// Up to `want` nodes that could be dropped, oldest unreferenced first.
    pub fn eviction_candidates(&mut self, want: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut looked = 0;
        while out.len() < want && looked < 4 * want.max(16) {
            let Some(ino) = self.unreferenced.pop_front() else {
                break;
            };
            looked += 1;
            if self.evictable(ino) {
                out.push(ino);
            }
        }
        out
    }

    /// Drops `ino` if it is still unreferenced; its parent's listing is no longer whole,
    /// and the parent becomes a candidate once it has no children left.
    pub fn evict(&mut self, ino: u64) {
        if !self.evictable(ino) {
            return;
        }
        let Some(n) = self.nodes.remove(&ino) else { return };
        if self.by_key.get(&n.key) == Some(&ino) {
            self.by_key.remove(&n.key);
        }
        if let Some(p) = self.nodes.get_mut(&n.parent) {
            if p.children.get(&n.name) == Some(&ino) {
                p.children.remove(&n.name);
            }
            p.listed_until = None;
            if p.children.is_empty() && p.lookups == 0 {
                self.unreferenced.push_back(n.parent);
            }
        }
    }

    /// Puts a candidate that could not go now back at the end of the line.
    pub fn keep(&mut self, ino: u64) {
        self.unreferenced.push_back(ino);
    }

    /// Drops cached knowledge of `parent`'s listing (after a change made through the mount).
    pub fn invalidate_listing(&mut self, parent: u64) {
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.listed_until = None;
        }
    }
}

#[cfg(test)]
mod tests;
