//! The free space of the cache directory's disk, for the floor the cache keeps
//! (`--cache-min-free`). A `statvfs` per block written, two with the eviction's look, were
//! 2 % of the daemon's CPU in a cold epoch over 10,000 files of 100 KiB (BENCHMARKS.md
//! item 147), so a reading is kept for a moment, less what the cache writes meanwhile,
//! and dropped when the cache frees space. Others writing to the disk meanwhile can take
//! the floor by what they write in that moment at most.

use crate::cache_dir::disk_bytes;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a reading stands.
const FRESH: Duration = Duration::from_millis(100);

pub(super) struct FreeSpace {
    dir: PathBuf,
    fresh: Duration,
    reading: Mutex<Option<Reading>>,
}

struct Reading {
    at: Instant,
    available: u64,
}

impl FreeSpace {
    pub fn new(dir: PathBuf) -> FreeSpace {
        Self::fresh_for(dir, FRESH)
    }

    fn fresh_for(dir: PathBuf, fresh: Duration) -> FreeSpace {
        FreeSpace {
            dir,
            fresh,
            reading: Mutex::new(None),
        }
    }

    /// Bytes available to the cache now.
    pub fn available(&self) -> u64 {
        let mut reading = self.reading.lock();
        match reading.as_ref() {
            Some(r) if r.at.elapsed() < self.fresh => r.available,
            _ => {
                let available = disk_bytes(&self.dir).1;
                *reading = Some(Reading {
                    at: Instant::now(),
                    available,
                });
                available
            }
        }
    }

    /// The cache is about to write `bytes`: counted until the next reading.
    pub fn spend(&self, bytes: u64) {
        if let Some(r) = self.reading.lock().as_mut() {
            r.available = r.available.saturating_sub(bytes);
        }
    }

    /// The cache freed space: the next look asks the disk.
    pub fn forget(&self) {
        *self.reading.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_stands_a_moment_less_what_is_spent_and_goes_when_space_is_freed() {
        let dir = tempfile::tempdir().unwrap();
        // A moment as long as a busy test machine may need between two lines.
        let free = FreeSpace::fresh_for(dir.path().to_path_buf(), Duration::from_secs(3600));
        let first = free.available();
        assert!(first > 0);
        free.spend(4096);
        assert_eq!(free.available(), first - 4096, "the reading, less what was spent");
        free.spend(u64::MAX);
        assert_eq!(free.available(), 0);
        free.forget();
        assert!(free.available() > 0, "asked again");

        let stale_at_once = FreeSpace::fresh_for(dir.path().to_path_buf(), Duration::ZERO);
        stale_at_once.available();
        stale_at_once.spend(u64::MAX);
        assert!(stale_at_once.available() > 0, "asked again once stale");
    }
}
