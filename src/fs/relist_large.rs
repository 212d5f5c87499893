//! Large directories listed again whole for the lookups of their names. A directory of
//! more than one LIST page revalidates a name after the metadata TTL with a LIST of just
//! that name. A DataLoader built once opens every file of its dataset again each epoch,
//! by path, without listing: in a directory of 10,000 files a second epoch after the TTL
//! sent 9,234 LISTs (2.85 s, against 0.78 s for the same files in directories of 100,
//! which are listed again whole at the first lookup). So once a large directory has had
//! as many names revalidated one by one since its last whole listing as that listing
//! has pages, the next lookup lists it whole again: each page renews every entry it shows
//! unchanged, a lookup waits only until a page reaches its name, and the names
//! revalidated one by one cost at most as many LISTs as the whole listing.

use super::Fs;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Names in a LIST page.
const PAGE: usize = 1000;
/// Directories of more pages are not listed whole for their lookups: a name near the end
/// would wait for dozens of round trips, where its own LIST takes one.
const MAX_PAGES: usize = 32;
/// Large directories followed at once; beyond, the counts start over (a count lost only
/// delays a whole listing).
const DIRS: usize = 1024;

#[derive(Default)]
pub(super) struct RelistLarge {
    dirs: Mutex<HashMap<u64, LargeDir>>,
}

#[derive(Default)]
struct LargeDir {
    /// Names revalidated one by one (a LIST each) since the directory was last listed whole.
    one_by_one: usize,
    /// The whole listing under way, if one is.
    relisting: Option<watch::Receiver<Progress>>,
}

/// What `begin_relisting` found.
enum Start {
    /// No whole listing now.
    Not,
    /// One is under way: its progress.
    UnderWay(watch::Receiver<Progress>),
    /// The caller lists it: the sender of its progress, and the progress.
    Lead(watch::Sender<Progress>, watch::Receiver<Progress>),
}

/// How far a whole listing has come, in the bucket's key order.
#[derive(Clone, PartialEq, Eq)]
enum Progress {
    /// Every key up to this one has been listed and taken in.
    Upto(String),
    /// Listed to the end (true), or stopped by an error (false).
    Done(bool),
}

impl Progress {
    /// Whether the listing so far answers for the name whose key is `key`: `None` not yet,
    /// `Some(true)` once past `key/` (keys sort by byte: the last spelling of the name a
    /// listing can hold), `Some(false)` if it stopped short.
    fn answers_for(&self, key: &str) -> Option<bool> {
        match self {
            Progress::Upto(last) => (last.as_str() >= format!("{key}/").as_str()).then_some(true),
            Progress::Done(complete) => Some(*complete),
        }
    }
}

impl Fs {
    /// A name of the large directory `dir` is to be revalidated: true once a whole listing
    /// of the directory (under way, or started now because enough names were revalidated
    /// one by one) has taken in the keys that answer for it, so the tree answers; false
    /// if the name is to be revalidated alone (counted toward the next whole listing).
    pub(super) async fn relisted_for(&self, dir: u64, dir_key: &str, name: &str) -> bool {
        let key = format!("{dir_key}{name}");
        let counted = |d: &mut LargeDir, pages: usize| {
            d.one_by_one += 1;
            d.one_by_one > pages
        };
        let (lead, mut progress) = match self.begin_relisting(dir, counted) {
            Start::Not => return false,
            Start::UnderWay(progress) => (None, progress),
            Start::Lead(tx, progress) => (Some(Relisting { fs: self, dir, tx }), progress),
        };
        if let Some(lead) = lead {
            // This lookup lists the directory whole; the others wait on its progress. The
            // listing ends (and the waiters go on) however this future ends.
            let listed = self.list_whole(&lead, dir_key).await;
            lead.tx.send_replace(Progress::Done(listed));
        }
        let answered = progress.wait_for(|p| p.answers_for(&key).is_some()).await;
        answered.is_ok_and(|p| p.answers_for(&key) == Some(true))
    }

    /// An open of a fresh file in the large directory `dir` found its listing near the
    /// end of its TTL (revalidate.rs): the directory is listed whole again in the
    /// background, unless such a listing is under way or it is too large. The lookups that
    /// come meanwhile wait on it as on a lookup's own; those after the TTL find their names
    /// fresh. Over a 40 ms link a DataLoader's second epoch over one directory of 10,000
    /// files otherwise waited for the whole listing that its lookups started.
    pub(super) fn renew_large_ahead(self: &Arc<Self>, dir: u64, dir_key: &str) {
        let Start::Lead(tx, _) = self.begin_relisting(dir, |_, _| true) else {
            return;
        };
        let (this, dir_key) = (self.clone(), dir_key.to_string());
        tokio::spawn(async move {
            let lead = Relisting { fs: &this, dir, tx };
            let listed = this.list_whole(&lead, &dir_key).await;
            lead.tx.send_replace(Progress::Done(listed));
        });
    }

    /// A whole listing of `dir`: the one under way, or a new one if `wanted` (given the
    /// directory's counts and how many pages it has) and the directory is not too large.
    fn begin_relisting(&self, dir: u64, wanted: impl FnOnce(&mut LargeDir, usize) -> bool) -> Start {
        let mut dirs = self.relist_large.dirs.lock();
        if dirs.len() >= DIRS && !dirs.contains_key(&dir) {
            dirs.clear();
        }
        let d = dirs.entry(dir).or_default();
        if let Some(progress) = &d.relisting {
            return Start::UnderWay(progress.clone());
        }
        let pages = self
            .tree()
            .get(dir)
            .map_or(1, |n| n.children.len().div_ceil(PAGE))
            .max(1);
        if !wanted(d, pages) || pages > MAX_PAGES {
            return Start::Not;
        }
        let (tx, rx) = watch::channel(Progress::Upto(String::new()));
        d.relisting = Some(rx.clone());
        Start::Lead(tx, rx)
    }

    /// Lists `dir_key` whole into the tree (its segments at once, list_segments.rs),
    /// telling `lead`'s waiters how far it has come; true if it reached the end.
    async fn list_whole(&self, lead: &Relisting<'_>, dir_key: &str) -> bool {
        let reached = |upto: String| {
            lead.tx.send_replace(Progress::Upto(upto));
        };
        self.list_in_segments(lead.dir, dir_key, &reached).await
    }
}

/// A whole listing under way: when it ends, however it ends, the directory's count
/// starts over and its waiters go on.
struct Relisting<'a> {
    fs: &'a Fs,
    dir: u64,
    tx: watch::Sender<Progress>,
}

impl Drop for Relisting<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.fs.relist_large.dirs.lock().get_mut(&self.dir) {
            d.relisting = None;
            d.one_by_one = 0;
        }
        self.tx.send_if_modified(|p| {
            let running = matches!(p, Progress::Upto(_));
            if running {
                *p = Progress::Done(false);
            }
            running
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn a_listing_answers_for_a_name_once_past_both_its_spellings() {
        let upto = |k: &str| Progress::Upto(k.to_string());
        assert_eq!(upto("d/b").answers_for("d/a"), Some(true));
        assert_eq!(upto("d/a").answers_for("d/a"), None, "d/a/ may come next");
        assert_eq!(upto("d/a/").answers_for("d/a"), Some(true));
        assert_eq!(upto("d/a.txt").answers_for("d/a"), None, "sorts before d/a/");
        assert_eq!(upto("d/").answers_for("d/a"), None);
        assert_eq!(upto("").answers_for("d/a"), None);
        assert_eq!(Progress::Done(true).answers_for("d/z"), Some(true));
        assert_eq!(Progress::Done(false).answers_for("d/a"), Some(false));
    }
}
