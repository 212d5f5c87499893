//! Which open files the kernel reads by itself from the disk cache's whole copy (FUSE
//! passthrough), and the rules the kernel sets for them: all the open files of an inode
//! are read either through s3vol or from one backing file, never both (a mixed open
//! fails with EIO in the kernel). So a read-only open joins the backing file its inode
//! is already read from; an inode open through s3vol gets no backing file until it is
//! closed; and an open for writing while readers read the backing file is refused with
//! ETXTBSY, as Linux refuses writing a running program (its writes would not reach
//! s3vol), and so is a truncate. The kernel sends a closed file's release without
//! waiting for it, so such an open first gives the readers' releases a moment to arrive:
//! a program that reads a file, closes it and rewrites it is not refused.

use fuser::{BackingId, ReplyOpen};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// How long an open for writing (or a truncate) waits for the releases of the readers of
/// a backing file before it is refused: a release sent at a reader's `close` reaches the
/// daemon within milliseconds, a loaded machine's within this.
const RELEASE_GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Passthrough {
    /// The kernel took the passthrough capability at init (and registering a backing
    /// file has not failed since).
    enabled: AtomicBool,
    state: Mutex<State>,
    /// Told each time an inode's last passthrough reader is released.
    readers_left: Notify,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, InodeFiles>,
    /// The handles read from a backing file.
    passed: HashSet<u64>,
}

/// An inode's open files, by how they are read.
#[derive(Default)]
struct InodeFiles {
    backing: Option<Arc<BackingId>>,
    passed: usize,
    through_s3vol: usize,
}

/// How an open is answered.
pub enum OpenAs {
    /// Read by the kernel from this backing file.
    Passthrough(Arc<BackingId>),
    /// Read and written through s3vol.
    ThroughS3vol,
    /// Refused: open for writing while the kernel reads the inode from a backing file.
    Busy,
}

impl Passthrough {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Decides how open handle `fh` of `ino` is read; `whole_file` is the disk cache's
    /// whole copy, if the core offered one.
    pub fn open(&self, reply: &ReplyOpen, ino: u64, fh: u64, write: bool, whole_file: Option<File>) -> OpenAs {
        let mut state = self.state.lock();
        let files = state.inodes.entry(ino).or_default();
        let as_ = match (&files.backing, whole_file) {
            (Some(_), _) if write => return OpenAs::Busy,
            (Some(backing), _) => OpenAs::Passthrough(backing.clone()),
            (None, Some(file)) if files.through_s3vol == 0 && self.enabled.load(Ordering::Relaxed) => {
                match reply.open_backing(&file) {
                    Ok(id) => {
                        let backing = Arc::new(id);
                        files.backing = Some(backing.clone());
                        OpenAs::Passthrough(backing)
                    }
                    Err(e) => {
                        // Not root, or a cache directory on a stacked filesystem.
                        tracing::warn!(
                            "the kernel refused a cached file for passthrough ({e}); reads go through s3vol from now on"
                        );
                        self.enabled.store(false, Ordering::Relaxed);
                        OpenAs::ThroughS3vol
                    }
                }
            }
            _ => OpenAs::ThroughS3vol,
        };
        match as_ {
            OpenAs::Passthrough(_) => {
                files.passed += 1;
                state.passed.insert(fh);
            }
            _ => files.through_s3vol += 1,
        }
        as_
    }

    /// Whether the kernel reads `ino` from a backing file now: a change of its size would
    /// not reach those readers.
    pub fn read_from_backing(&self, ino: u64) -> bool {
        self.state
            .lock()
            .inodes
            .get(&ino)
            .is_some_and(|files| files.backing.is_some())
    }

    /// Whether `ino` is free of backing-file readers, or becomes so within
    /// `RELEASE_GRACE` (their releases in flight: see the module's comment).
    pub async fn readers_gone(&self, ino: u64) -> bool {
        let deadline = tokio::time::Instant::now() + RELEASE_GRACE;
        loop {
            let left = self.readers_left.notified();
            tokio::pin!(left);
            // Registered before the look, so that a release between the two is not missed.
            left.as_mut().enable();
            if !self.read_from_backing(ino) {
                return true;
            }
            if tokio::time::timeout_at(deadline, left).await.is_err() {
                return !self.read_from_backing(ino);
            }
        }
    }

    /// A handle created with its file (read and written through s3vol).
    pub fn created(&self, ino: u64) {
        self.state.lock().inodes.entry(ino).or_default().through_s3vol += 1;
    }

    /// The kernel released handle `fh` of `ino`; the last passthrough handle of an inode
    /// drops its backing file.
    pub fn release(&self, ino: u64, fh: u64) {
        let mut state = self.state.lock();
        let passed = state.passed.remove(&fh);
        let Some(files) = state.inodes.get_mut(&ino) else {
            return;
        };
        if passed {
            files.passed = files.passed.saturating_sub(1);
            if files.passed == 0 {
                files.backing = None;
                self.readers_left.notify_waiters();
            }
        } else {
            files.through_s3vol = files.through_s3vol.saturating_sub(1);
        }
        if files.passed == 0 && files.through_s3vol == 0 {
            state.inodes.remove(&ino);
        }
    }
}
