//! Writes to a staging file that skip the page cache. Writing a large file (a 2 GiB
//! checkpoint) through the page cache spent 58 % of the daemon's CPU in the kernel's copy
//! into freshly allocated cache pages; a large write of whole pages at a page-aligned
//! offset goes instead from a reused aligned buffer with O_DIRECT. Other writes (a file's
//! last partial page, an editor's small changes) stay buffered on the file's other handle: the kernel
//! keeps the two coherent (a direct write first writes back and then drops the cached
//! pages of its range), so reads on the buffered handle always see the latest bytes.

use super::block_buffers::{ALIGN, Aligned};
use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest piece written at once: the FUSE write size, so one copy per request.
const PIECE: usize = 1 << 20;

thread_local! {
    /// One aligned buffer per thread that writes (the runtime's few workers), reused.
    static SCRATCH: RefCell<Option<Aligned>> = const { RefCell::new(None) };
}

/// Writes smaller than this stay buffered: the copy costs little, and a file written only
/// in small pieces (most small files) never opens a second descriptor on its staging file,
/// of which thousands may wait for their upload at once.
const DIRECT_MIN: usize = 64 << 10;

enum Handle {
    /// Not opened yet: no write so far was large enough.
    Untried,
    Open(File),
    /// The filesystem refuses O_DIRECT (tmpfs), or a direct write failed with EINVAL.
    Refused,
}

/// An O_DIRECT handle on a staging file, opened at its first large whole-page write.
pub struct DirectWriter {
    path: PathBuf,
    handle: Handle,
}

impl DirectWriter {
    pub fn new(path: &Path) -> DirectWriter {
        DirectWriter {
            path: path.to_path_buf(),
            handle: Handle::Untried,
        }
    }

    /// Writes `data` at `offset` with O_DIRECT if both are whole pages and `data` is at
    /// least `DIRECT_MIN` long; false if it did not (the caller writes it buffered).
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> std::io::Result<bool> {
        let aligned = offset.is_multiple_of(ALIGN as u64) && data.len().is_multiple_of(ALIGN);
        if !aligned || data.len() < DIRECT_MIN {
            return Ok(false);
        }
        if let Handle::Untried = self.handle {
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
                .open(&self.path);
            self.handle = opened.map_or(Handle::Refused, Handle::Open);
        }
        let Handle::Open(file) = &self.handle else {
            return Ok(false);
        };
        let written: std::io::Result<u64> = SCRATCH.with_borrow_mut(|scratch| {
            let scratch = scratch.get_or_insert_with(|| Aligned::new(PIECE));
            let mut done = 0;
            for piece in data.chunks(scratch.size()) {
                let buffer = &mut scratch.as_mut_slice()[..piece.len()];
                buffer.copy_from_slice(piece);
                file.write_all_at(buffer, offset + done)?;
                done += piece.len() as u64;
            }
            Ok(done)
        });
        match written {
            Ok(_) => Ok(true),
            // Nothing was written when the first piece is refused; a later piece cannot
            // be refused for alignment after the first was taken.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.handle = Handle::Refused;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_whole_page_writes_go_direct_and_the_rest_is_declined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staging");
        std::fs::write(&path, b"").unwrap();
        let mut writer = DirectWriter::new(&path);
        let pages: Vec<u8> = (0..3 * ALIGN + PIECE).map(|i| (i % 251) as u8).collect();
        assert!(!writer.write_at(&pages[..ALIGN], 0).unwrap(), "a small write");
        assert!(matches!(writer.handle, Handle::Untried), "opens nothing for it");
        let direct = writer.write_at(&pages, ALIGN as u64).unwrap();
        assert!(!writer.write_at(&pages[..100], 0).unwrap(), "a partial page");
        assert!(
            !writer.write_at(&pages[..DIRECT_MIN], 100).unwrap(),
            "an unaligned offset"
        );
        if direct {
            let read = std::fs::read(&path).unwrap();
            assert_eq!(&read[ALIGN..], &pages[..]);
        } else {
            // A filesystem without O_DIRECT (tmpfs): the writer declines for good.
            assert!(matches!(writer.handle, Handle::Refused));
            assert!(!writer.write_at(&pages[..DIRECT_MIN], 0).unwrap());
        }
    }
}
