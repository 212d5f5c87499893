//! Open handles and what hangs on them: the file and directory handles, how many each
//! inode has open, each inode's local data (written, or open for writing), its readers'
//! read-ahead, and the unlink rule that joins them: a file unlinked while open stays
//! readable, its object hidden, and is deleted from the bucket at its last close; clean
//! local data goes with the last handle.

use super::OpenFile;
use super::content::MemoryBudget;
use super::dirty::FileData;
use super::listing::DirStream;
use super::readahead::ReadStreams;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An inode's local data, shared by its handles and its upload.
pub(super) type Data = Arc<tokio::sync::Mutex<FileData>>;

pub(super) type DirHandle = Arc<tokio::sync::Mutex<DirStream>>;

pub(super) struct Handles {
    next_fh: AtomicU64,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Open file handles per inode.
    open_counts: Mutex<HashMap<u64, usize>>,
    /// Sequential-read detection of each open inode, shared by its handles.
    read_streams: Mutex<HashMap<u64, Arc<Mutex<ReadStreams>>>>,
    dirs: Mutex<HashMap<u64, DirHandle>>,
    /// Files with local changes (or open for writing), by inode.
    data: Mutex<HashMap<u64, Data>>,
    /// Unlinked while open: deleted from the bucket at the last close, hidden until then.
    pending_deletes: Mutex<HashMap<u64, String>>,
    /// Memory the local data may hold before it spills to staging files.
    dirty_budget: Arc<MemoryBudget>,
}

impl Handles {
    pub fn new(dirty_budget: Arc<MemoryBudget>) -> Handles {
        Handles {
            next_fh: AtomicU64::new(1),
            files: Default::default(),
            open_counts: Default::default(),
            read_streams: Default::default(),
            dirs: Default::default(),
            data: Default::default(),
            pending_deletes: Default::default(),
            dirty_budget,
        }
    }
}

/// What a file handle's release left to do.
pub(super) struct Released {
    pub file: Arc<OpenFile>,
    /// It was the inode's last open handle.
    pub last: bool,
    /// The key of an object unlinked while open, to delete now.
    pub pending_delete: Option<String>,
}

impl Handles {
    /// The memory budget every file's local data draws on.
    pub fn dirty_budget(&self) -> &Arc<MemoryBudget> {
        &self.dirty_budget
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The read-ahead state of `ino`'s readers, made by `make` for its first handle.
    pub fn read_streams(&self, ino: u64, make: impl FnOnce() -> ReadStreams) -> Arc<Mutex<ReadStreams>> {
        self.read_streams
            .lock()
            .entry(ino)
            .or_insert_with(|| Arc::new(Mutex::new(make())))
            .clone()
    }

    /// Registers an open file; returns its handle number.
    pub fn open_file(&self, file: Arc<OpenFile>) -> u64 {
        let fh = self.new_fh();
        let ino = file.ino;
        self.files.lock().insert(fh, file);
        *self.open_counts.lock().entry(ino).or_default() += 1;
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().get(&fh).cloned()
    }

    /// Every open handle of `ino`.
    pub fn files_of(&self, ino: u64) -> Vec<Arc<OpenFile>> {
        self.files.lock().values().filter(|h| h.ino == ino).cloned().collect()
    }

    /// Some handle has `ino` open for writing.
    pub fn open_for_writing(&self, ino: u64) -> bool {
        self.files.lock().values().any(|h| h.ino == ino && h.writable)
    }

    pub fn open_files(&self) -> usize {
        self.files.lock().len()
    }

    /// Closes a file handle. The pending delete is taken under the open counts' lock, as
    /// `unlink` decides under it: a release racing with an unlink either sees the delete
    /// or closed the file before (then the unlink deletes at once).
    pub fn release(&self, fh: u64) -> Option<Released> {
        let file = self.files.lock().remove(&fh)?;
        let mut counts = self.open_counts.lock();
        let n = counts.entry(file.ino).or_default();
        *n = n.saturating_sub(1);
        let last = *n == 0;
        let mut pending_delete = None;
        if last {
            counts.remove(&file.ino);
            self.read_streams.lock().remove(&file.ino);
            pending_delete = self.pending_deletes.lock().remove(&file.ino);
        }
        Some(Released {
            file,
            last,
            pending_delete,
        })
    }

    /// An unlink of `ino`: true if it is open. Then `object` (its key, if it has one in
    /// the bucket) is deleted at the last close, and `hide` runs first, under the same
    /// lock as `release`'s decision.
    pub fn unlinked(&self, ino: u64, object: Option<&str>, hide: impl FnOnce()) -> bool {
        let counts = self.open_counts.lock();
        let open = counts.contains_key(&ino);
        if open && let Some(key) = object {
            // Readers of an open file keep working: the object goes at the last close.
            hide();
            self.pending_deletes.lock().insert(ino, key.to_string());
        }
        open
    }

    /// Which of `inos` the inode table must keep: open, with local data, or to be deleted.
    pub fn pinned(&self, inos: &[u64]) -> Vec<bool> {
        let open = self.open_counts.lock();
        let data = self.data.lock();
        let deletes = self.pending_deletes.lock();
        inos.iter()
            .map(|i| open.contains_key(i) || data.contains_key(i) || deletes.contains_key(i))
            .collect()
    }

    pub fn open_dir(&self, stream: DirStream) -> u64 {
        let fh = self.new_fh();
        self.dirs.lock().insert(fh, Arc::new(tokio::sync::Mutex::new(stream)));
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<DirHandle> {
        self.dirs.lock().get(&fh).cloned()
    }

    pub fn release_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    pub fn data(&self, ino: u64) -> Option<Data> {
        self.data.lock().get(&ino).cloned()
    }

    pub fn has_data(&self, ino: u64) -> bool {
        self.data.lock().contains_key(&ino)
    }

    /// `ino`'s local data, made by `make` if it has none.
    pub fn data_or_insert(&self, ino: u64, make: impl FnOnce() -> FileData) -> Data {
        self.data
            .lock()
            .entry(ino)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(make())))
            .clone()
    }

    pub fn insert_data(&self, ino: u64, f: FileData) {
        self.data.lock().insert(ino, Arc::new(tokio::sync::Mutex::new(f)));
    }

    pub fn remove_data(&self, ino: u64) {
        self.data.lock().remove(&ino);
    }

    /// `data` is still `ino`'s local data (not dropped or replaced since its lookup).
    pub fn holds_data(&self, ino: u64, data: &Data) -> bool {
        self.data.lock().get(&ino).is_some_and(|d| Arc::ptr_eq(d, data))
    }

    /// Removes `ino`'s data if it is still `data` (not replaced since).
    pub fn remove_data_if(&self, ino: u64, data: &Data) {
        let mut map = self.data.lock();
        if map.get(&ino).is_some_and(|d| Arc::ptr_eq(d, data)) {
            map.remove(&ino);
        }
    }

    /// Removes `ino`'s data unless a handle has it open, decided under the open counts'
    /// lock (an open racing with the last release keeps the data); true if removed.
    pub fn remove_data_unless_open(&self, ino: u64) -> bool {
        let counts = self.open_counts.lock();
        let closed = !counts.contains_key(&ino);
        if closed {
            self.data.lock().remove(&ino);
        }
        closed
    }

    pub fn all_data(&self) -> Vec<(u64, Data)> {
        self.data.lock().iter().map(|(i, d)| (*i, d.clone())).collect()
    }

    /// Panics while holding each lock in turn (see `panic_tests.rs`).
    #[cfg(test)]
    pub fn panic_holding_each_lock(&self) {
        super::panic_tests::panic_holding(&self.files);
        super::panic_tests::panic_holding(&self.open_counts);
        super::panic_tests::panic_holding(&self.read_streams);
        super::panic_tests::panic_holding(&self.dirs);
        super::panic_tests::panic_holding(&self.data);
        super::panic_tests::panic_holding(&self.pending_deletes);
    }
}
