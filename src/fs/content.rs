//! The bytes a file holds locally: in memory while small and while the dirty-memory budget
//! allows, else in a staging file under the cache directory.

use super::direct_write::DirectWriter;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How staging files are named (`staging-PID-RANDOM`).
pub const STAGING_PREFIX: &str = "staging-";

/// Dirty bytes held in memory across all files, against a budget.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicU64,
    limit: u64,
    /// Largest in-memory content of one file; larger files are staged on disk.
    per_file: u64,
}

impl MemoryBudget {
    pub fn new(limit: u64, per_file: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            used: AtomicU64::new(0),
            limit,
            per_file,
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= self.limit).then_some(u + bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

pub enum Content {
    Memory {
        bytes: Vec<u8>,
        budget: Arc<MemoryBudget>,
    },
    /// `journaled`: a journal record names this file; it must survive a crash, so it is
    /// removed only once its data is uploaded (`clear`), never by Drop.
    /// `direct`: the same file for large writes of whole pages (see `direct_write.rs`).
    Staged {
        file: File,
        direct: DirectWriter,
        path: PathBuf,
        journaled: bool,
    },
}

impl Content {
    pub fn new(budget: Arc<MemoryBudget>) -> Content {
        Content::Memory {
            bytes: Vec::new(),
            budget,
        }
    }

    #[cfg(test)]
    pub fn is_staged(&self) -> bool {
        matches!(self, Content::Staged { .. })
    }

    /// Writes `data` at `offset`, moving to a staging file in `staging_dir` when memory
    /// would go over the file's or the mount's budget.
    pub fn write_at(&mut self, offset: u64, data: &[u8], staging_dir: &Path) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        if let Content::Memory { bytes, budget } = self {
            let grow = end.saturating_sub(bytes.len() as u64);
            if end > budget.per_file || (grow > 0 && !budget.try_take(grow)) {
                self.spill(staging_dir)?;
            } else {
                if grow > 0 {
                    bytes.resize(end as usize, 0);
                }
                bytes[offset as usize..end as usize].copy_from_slice(data);
                return Ok(());
            }
        }
        match self {
            Content::Staged { file, direct, .. } => match direct.write_at(data, offset)? {
                true => Ok(()),
                false => file.write_all_at(data, offset),
            },
            Content::Memory { .. } => unreachable!("spilled above"),
        }
    }

    /// Reads `len` bytes at `offset`; what was never written reads as zeros.
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        match self {
            Content::Memory { bytes, .. } => {
                let start = (offset as usize).min(bytes.len());
                let end = (offset as usize + len).min(bytes.len());
                out[..end - start].copy_from_slice(&bytes[start..end]);
            }
            Content::Staged { file, .. } => {
                let mut done = 0;
                while done < len {
                    let n = file.read_at(&mut out[done..], offset + done as u64)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
            }
        }
        Ok(out)
    }

    pub fn truncate(&mut self, size: u64) -> std::io::Result<()> {
        match self {
            Content::Memory { bytes, budget } => {
                if (size as usize) < bytes.len() {
                    budget.give_back(bytes.len() as u64 - size);
                    bytes.truncate(size as usize);
                    bytes.shrink_to_fit();
                }
                Ok(())
            }
            Content::Staged { file, .. } => {
                if file.metadata()?.len() > size {
                    file.set_len(size)?;
                }
                Ok(())
            }
        }
    }

    /// Empties the content (after an upload): memory goes back to the budget. A staging
    /// file is handed back still on disk: a journal record may name it, and it goes only
    /// once the record is gone (`UploadedStaging::remove`).
    pub fn clear(&mut self, budget: &Arc<MemoryBudget>) -> Option<UploadedStaging> {
        let Content::Staged {
            path, file, journaled, ..
        } = self
        else {
            let _ = self.truncate(0);
            return None;
        };
        let left = file.try_clone().ok().map(|file| UploadedStaging {
            path: path.clone(),
            file,
        });
        // Not removed by Drop either way: the caller removes it.
        *journaled = true;
        *self = Content::new(budget.clone());
        left
    }

    /// Another handle on the staging file, if the content is staged (to sync it in the
    /// background while it is still written).
    pub fn staging_file(&self) -> Option<File> {
        match self {
            Content::Staged { file, .. } => file.try_clone().ok(),
            Content::Memory { .. } => None,
        }
    }

    /// Moves the content to a staging file (for a journal record to name) and returns its
    /// path and a handle for the journal's flush to sync: a killed daemon loses nothing
    /// written, only a power loss can, until that flush.
    pub fn stage(&mut self, staging_dir: &Path) -> std::io::Result<(PathBuf, File)> {
        self.spill(staging_dir)?;
        match self {
            Content::Staged {
                file, path, journaled, ..
            } => {
                *journaled = true;
                Ok((path.clone(), file.try_clone()?))
            }
            Content::Memory { .. } => unreachable!("spilled above"),
        }
    }

    /// The bytes, if held in memory (they can go into the journal inline).
    pub fn in_memory(&self) -> Option<&[u8]> {
        match self {
            Content::Memory { bytes, .. } => Some(bytes),
            Content::Staged { .. } => None,
        }
    }

    /// Bytes a previous run journaled inline. Counted against the budget even past it: they
    /// are there already, and go once uploaded.
    pub fn from_bytes(bytes: Vec<u8>, budget: Arc<MemoryBudget>) -> Content {
        budget.used.fetch_add(bytes.len() as u64, Ordering::AcqRel);
        Content::Memory { bytes, budget }
    }

    /// Reopens a staging file left by a previous run: a regular file, never through a
    /// symbolic link.
    pub fn reopen(path: &Path) -> std::io::Result<Content> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(Content::Staged {
            file,
            direct: DirectWriter::new(path),
            path: path.to_path_buf(),
            journaled: true,
        })
    }

    fn spill(&mut self, staging_dir: &Path) -> std::io::Result<()> {
        let Content::Memory { bytes, .. } = self else {
            return Ok(());
        };
        crate::cache_dir::create_private_dirs(staging_dir)?;
        let path = staging_dir.join(format!(
            "{STAGING_PREFIX}{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all_at(bytes, 0)?;
        // Dropping the memory variant returns its bytes to the budget.
        *self = Content::Staged {
            file,
            direct: DirectWriter::new(&path),
            path,
            journaled: false,
        };
        Ok(())
    }
}

/// A staging file whose data is in the bucket, not yet removed.
pub struct UploadedStaging {
    path: PathBuf,
    /// Kept open past the unlink: the last close frees the file's blocks, which is left
    /// to `close_in_background`.
    file: File,
}

impl UploadedStaging {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unlinks the file (already gone is fine).
    pub fn remove(self) -> std::io::Result<()> {
        let removed = match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        close_in_background(self.file);
        removed
    }
}

/// Staging files from this size on are closed off the caller's thread.
const BACKGROUND_CLOSE_MIN: u64 = 16 * 1024 * 1024;

/// Closes the last handle on an unlinked staging file. That close frees the file's blocks
/// and cached pages (about 0.2 s per GiB on ext4), which close() and the end of an upload
/// need not wait for; tokio's blocking pool bounds the threads doing it.
fn close_in_background(file: File) {
    let large = file.metadata().is_ok_and(|m| m.len() >= BACKGROUND_CLOSE_MIN);
    if let (true, Ok(runtime)) = (large, tokio::runtime::Handle::try_current()) {
        runtime.spawn_blocking(move || drop(file));
    }
}

impl Drop for Content {
    fn drop(&mut self) {
        match self {
            Content::Memory { bytes, budget } => budget.give_back(bytes.len() as u64),
            Content::Staged {
                path, journaled: false, ..
            } => {
                let _ = std::fs::remove_file(path);
            }
            Content::Staged { journaled: true, .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_to_disk_beyond_the_budget_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(100, 1000);
        let mut a = Content::new(budget.clone());
        a.write_at(0, &[1; 60], dir.path()).unwrap();
        assert!(!a.is_staged());
        assert_eq!(budget.used(), 60);
        let mut b = Content::new(budget.clone());
        b.write_at(10, &[2; 60], dir.path()).unwrap();
        assert!(b.is_staged());
        assert_eq!(budget.used(), 60);
        assert_eq!(
            b.read_at(0, 80).unwrap(),
            [vec![0; 10], vec![2; 60], vec![0; 10]].concat()
        );
        a.truncate(20).unwrap();
        assert_eq!(budget.used(), 20);
        // Spilling gives the memory back exactly once.
        let mut c = Content::new(budget.clone());
        c.write_at(0, &[3; 30], dir.path()).unwrap();
        assert_eq!(budget.used(), 50);
        c.stage(dir.path()).unwrap();
        assert_eq!(budget.used(), 20);
        c.clear(&budget).expect("staged").remove().unwrap();
        assert_eq!(budget.used(), 20);
        drop(a);
        assert_eq!(budget.used(), 0);
        let staged = std::fs::read_dir(dir.path()).unwrap().count();
        drop(b);
        assert_eq!((staged, std::fs::read_dir(dir.path()).unwrap().count()), (1, 0));
    }

    /// Descriptors of this process open on files under `dir` (unlinked ones included).
    fn open_under(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[tokio::test]
    async fn clearing_a_large_staging_file_unlinks_it_at_once_and_closes_it_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(0, 0);
        let mut content = Content::new(budget.clone());
        content
            .write_at(0, &vec![1; BACKGROUND_CLOSE_MIN as usize], dir.path())
            .unwrap();
        // The buffered handle, and the direct one where the filesystem takes O_DIRECT.
        assert!((1..=2).contains(&open_under(dir.path())));
        content.clear(&budget).expect("staged").remove().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "unlinked by clear");
        for _ in 0..500 {
            if open_under(dir.path()) == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the staging file was never closed");
    }
}
