//! The inode table's budget: the kernel's references to inodes, and dropping unreferenced
//! entries beyond `--max-nodes`.

use super::Fs;

impl Fs {
    /// Entries in the inode table now.
    pub fn inode_count(&self) -> usize {
        self.tree().node_count()
    }

    /// The kernel was given `ino` in a readdirplus entry.
    pub fn note_lookup(&self, ino: u64) {
        self.tree().add_lookup(ino);
    }

    /// The kernel dropped `count` references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        self.tree().forget(ino, count);
    }

    /// Keeps the inode table within its budget: unreferenced entries the kernel forgot
    /// (or never saw) go, oldest first, unless a file is open or has local data.
    pub(super) fn trim_tree(&self) {
        let excess = self.tree().node_count().saturating_sub(self.config.max_nodes);
        if excess == 0 {
            return;
        }
        let candidates = self.tree().eviction_candidates(excess + 64);
        let pinned = self.handles.pinned(&candidates);
        let mut tree = self.tree();
        for (ino, pinned) in candidates.into_iter().zip(pinned) {
            if pinned { tree.keep(ino) } else { tree.evict(ino) }
        }
    }
}
