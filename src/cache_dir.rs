//! A cache directory and its administration: where it is, its lock (one mount per
//! directory, a `mount-N` beside it for the next), its layout (`blocks/` for the disk
//! cache, `staging/` for written files not yet uploaded, `journal/` for their records),
//! its private modes, and the sizes given to it (`--cache-size`, `--cache-min-free`).
//! The core's disk cache, staging and journal own what is inside each part.

use crate::private_dir::{self, Link, Purpose};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The disk cache's segments of blocks (`blocks/0000000000000001.seg`, and its `.idx`).
pub const BLOCKS: &str = "blocks";
/// Written files not yet in the bucket.
pub const STAGING: &str = "staging";
/// The crash journal's log.
pub const JOURNAL: &str = "journal";

/// Replaces the cache directory's file `path` whole with `bytes`, owner-only, through a
/// temporary file renamed over it: a crash leaves the old file or the new one, never half
/// of one. `durable` flushes the data before the rename (a file not rebuilt otherwise).
pub fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_data()?;
    }
    drop(file);
    std::fs::rename(&tmp, path)
}

/// How big the cache may grow: bytes, or a share of the disk it lives on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheSize {
    Bytes(u64),
    Percent(f64),
}

impl CacheSize {
    pub fn parse(text: &str) -> Result<CacheSize, String> {
        match text.trim().strip_suffix('%') {
            Some(p) => {
                let p: f64 = p.trim().parse().map_err(|_| format!("invalid percentage '{text}'"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("percentage '{text}' is not between 0 and 100"));
                }
                Ok(CacheSize::Percent(p))
            }
            None => crate::option_values::parse_size(text).map(CacheSize::Bytes),
        }
    }

    pub fn resolve(self, dir: &Path) -> u64 {
        match self {
            CacheSize::Bytes(b) => b,
            CacheSize::Percent(p) => (disk_bytes(dir).0 as f64 * p / 100.0) as u64,
        }
    }
}

/// Bytes available on the filesystem holding `dir`, if it can be asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() * s.fragment_size())
}

/// (total, available) bytes of the filesystem holding `dir`.
pub(crate) fn disk_bytes(dir: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            let frag = s.fragment_size();
            (s.blocks() * frag, s.blocks_available() * frag)
        }
        Err(_) => (0, 0),
    }
}

const CACHE_DIR: Purpose = Purpose {
    what: "cache directory",
    elsewhere: "choose another with --cache-dir",
};

/// What a cache directory holds; each is private like the directory itself.
const CACHE_SUBDIRS: [&str; 3] = [BLOCKS, STAGING, JOURNAL];

/// Creates a cache directory and its parts with mode 0700, or checks existing ones (see
/// `private_dir`). An older s3vol's directories, readable by others, are made private
/// with one log line.
fn private_cache_dir(dir: &Path) -> Result<(), String> {
    let mut loosened = Vec::new();
    if let Some(mode) = private_dir::create(dir, CACHE_DIR, Link::Follow)? {
        loosened.push(format!("{} (mode {mode:04o})", dir.display()));
    }
    for sub in CACHE_SUBDIRS {
        let path = dir.join(sub);
        if let Some(mode) = private_dir::create(&path, CACHE_DIR, Link::Refuse)? {
            loosened.push(format!("{} (mode {mode:04o})", path.display()));
        }
    }
    if !loosened.is_empty() {
        tracing::warn!(
            "made private (mode 0700): {}; other users could read cached objects and unuploaded writes",
            loosened.join(", ")
        );
    }
    Ok(())
}

/// Takes the lock of a cache directory: the base itself, or for a second mount sharing
/// it, a `mount-N` subdirectory of its own. The lock lives as long as the returned file.
/// The directory returned is absolute (journal records name their staging files by it).
pub fn lock_cache_dir(base: &Path) -> Result<(PathBuf, File), String> {
    let failed = |dir: &Path, e: std::io::Error| format!("cache directory {}: {e}", dir.display());
    for n in 1..=16 {
        let dir = if n == 1 {
            base.to_path_buf()
        } else {
            base.join(format!("mount-{n}"))
        };
        private_cache_dir(&dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| failed(&dir, e))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if n > 1 {
                tracing::info!(
                    "cache directory {} is in use by another mount; using {}",
                    base.display(),
                    dir.display()
                );
            }
            let dir = std::fs::canonicalize(&dir).map_err(|e| failed(&dir, e))?;
            return Ok((dir, lock));
        }
    }
    Err(format!("cache directory {} is in use by 16 mounts", base.display()))
}

/// Whether another process holds `dir`'s lock.
pub fn cache_dir_in_use(dir: &Path) -> bool {
    let Ok(lock) = std::fs::OpenOptions::new().write(true).open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; released when it closes.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// `dir` and its missing parents, created 0700 whatever the umask (they hold private data).
pub(crate) fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_or_a_share_of_the_disk() {
        assert_eq!(CacheSize::parse("10%"), Ok(CacheSize::Percent(10.0)));
        assert_eq!(CacheSize::parse("2GiB"), Ok(CacheSize::Bytes(2 << 30)));
        assert!(CacheSize::parse("120%").is_err());
        assert!(CacheSize::parse("x%").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CacheSize::Bytes(7).resolve(dir.path()), 7);
        assert!(CacheSize::Percent(100.0).resolve(dir.path()) > 0);
    }

    #[test]
    fn a_second_mount_gets_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _l1) = lock_cache_dir(dir.path()).unwrap();
        let (second, _l2) = lock_cache_dir(dir.path()).unwrap();
        assert_eq!(first, dir.path());
        assert_eq!(second, dir.path().join("mount-2"));
        assert!(cache_dir_in_use(&first));
        drop(_l1);
        assert!(!cache_dir_in_use(&first));
    }
}
