//! The reference model of tests/it/core_model.rs: the bucket as a map of keys to bodies,
//! and the directories that live in the mount only where the provider forbids markers.

use s3vol::fs::Kind;
use s3vol::provider::{Markers, Overrides, Resolved};
use s3vol::source::Source;
use std::collections::BTreeMap;

/// The reference: the bucket's keys and bodies, and where the provider forbids markers
/// the directories that live in this mount only. What a mount shows follows from them: a
/// name is a directory if any key lies under `name/` or a mount-only directory is `name`
/// or lies under it, else a file if the key exists (a file and a directory of one name
/// show the directory).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    pub keys: BTreeMap<String, Vec<u8>>,
    /// mkdir puts no `dir/` marker (Hugging Face).
    pub no_markers: bool,
    /// Without markers (README, Hugging Face: "an empty directory lives in the mount only
    /// until a file is written into it"): the directories made by mkdir that no file
    /// written through this mount has reached yet. Each shows as a directory (with its
    /// ancestors) whatever the bucket holds; rmdir and a rename over it remove it, a rename
    /// moves it. Once a file is written into it, it is a directory of the bucket like any
    /// other: there while a key lies under it.
    pub mount_only: std::collections::BTreeSet<String>,
}

impl Model {
    pub fn new(source: &str) -> Model {
        let resolved = Resolved::new(&Source::parse(source).expect("source"), &Overrides::default());
        Model {
            no_markers: resolved.profile.markers == Markers::Forbidden,
            ..Model::default()
        }
    }

    pub fn kind(&self, path: &str) -> Option<Kind> {
        if path.is_empty() {
            return Some(Kind::Dir);
        }
        let dir = format!("{path}/");
        if self
            .keys
            .range(dir.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&dir))
            || self.mount_only.iter().any(|d| d == path || d.starts_with(&dir))
        {
            Some(Kind::Dir)
        } else if self.keys.contains_key(path) {
            Some(Kind::File)
        } else {
            None
        }
    }

    /// The errno a path walk to `path`'s parent gives, if any.
    pub fn parent_error(&self, path: &str) -> Option<i32> {
        let mut at = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last()?.1 {
            at = join(&at, part);
            match self.kind(&at) {
                Some(Kind::Dir) => {}
                Some(_) => return Some(libc::ENOTDIR),
                None => return Some(libc::ENOENT),
            }
        }
        None
    }

    /// What a lookup of `path` gives: the kind, or the errno of the walk.
    pub fn lookup(&self, path: &str) -> Result<Kind, i32> {
        match self.parent_error(path) {
            Some(e) => Err(e),
            None => self.kind(path).ok_or(libc::ENOENT),
        }
    }

    pub fn children(&self, dir: &str) -> BTreeMap<String, Kind> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut names = BTreeMap::new();
        let dirs = self.mount_only.iter().map(|d| format!("{d}/"));
        for key in self.keys.keys().cloned().chain(dirs).filter(|k| k.starts_with(&prefix)) {
            let name = key[prefix.len()..].split('/').next().unwrap_or_default();
            if !name.is_empty() {
                names
                    .entry(name.to_string())
                    .or_insert_with(|| self.kind(&join(dir, name)).expect("exists"));
            }
        }
        names
    }

    /// Every path the model shows, directories included.
    pub fn paths(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for key in self.keys.keys().chain(&self.mount_only) {
            let parts: Vec<&str> = key.split('/').filter(|p| !p.is_empty()).collect();
            for n in 1..=parts.len() {
                out.insert(parts[..n].join("/"));
            }
        }
        out.into_iter().collect()
    }

    pub fn file_mut(&mut self, path: &str) -> &mut Vec<u8> {
        self.keys.entry(path.to_string()).or_default()
    }

    /// Moves every key at `from` (a file) or under `from/` (a directory) to `to`, and the
    /// mount-only directories at or under `from` with them.
    pub fn rename(&mut self, from: &str, to: &str, kind: Kind) {
        let moved: Vec<String> = match kind {
            Kind::Dir => {
                let prefix = format!("{from}/");
                self.keys.keys().filter(|k| k.starts_with(&prefix)).cloned().collect()
            }
            _ => vec![from.to_string()],
        };
        for key in moved {
            let body = self.keys.remove(&key).expect("listed");
            self.keys.insert(format!("{to}{}", &key[from.len()..]), body);
        }
        let prefix = format!("{from}/");
        let dirs: Vec<String> = self
            .mount_only
            .iter()
            .filter(|d| *d == from || d.starts_with(&prefix))
            .cloned()
            .collect();
        for dir in dirs {
            self.mount_only.remove(&dir);
            self.mount_only.insert(format!("{to}{}", &dir[from.len()..]));
        }
    }

    /// A file written through the mount reached the bucket at `path`: the mount-only
    /// directories above it are directories of the bucket from now on.
    pub fn written(&mut self, path: &str) {
        self.mount_only.retain(|d| !path.starts_with(&format!("{d}/")));
    }
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

pub fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}
