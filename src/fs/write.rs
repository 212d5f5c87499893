//! Writes into a file's local data, and truncation. Attribute changes are `stat.rs`; what
//! happens to the changes from close() on is `writeback.rs`.

use super::dirty::FileData;
use super::{Errno, Fs, FsResult};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

fn io_errno(e: &std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Fs {
    pub(super) fn staging_dir(&self) -> PathBuf {
        self.uploader.journal().staging_dir()
    }

    /// Metadata persisted with an upload of `ino`, where the provider keeps it.
    pub(super) fn metadata_for(&self, ino: u64) -> crate::store::Metadata {
        match (self.resolved.profile.user_metadata, self.tree().get(ino)) {
            (true, Some(n)) => n.attr.to_metadata(),
            _ => crate::store::Metadata::new(),
        }
    }

    fn touch_node(&self, ino: u64, size: u64) {
        if let Some(n) = self.tree().get_mut(ino) {
            n.attr.size = size;
            n.attr.set_mtime(SystemTime::now());
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, bytes: &[u8]) -> FsResult<u32> {
        let file = self.handle(fh)?;
        if !file.writable {
            return Err(Errno(libc::EBADF));
        }
        let data = self
            .handles
            .data(file.ino)
            // Its data went to a conflict copy: the file changed remotely.
            .ok_or(Errno(libc::ESTALE))?;
        let mut f = data.lock().await;
        let offset = if file.append { f.size } else { offset };
        let end = offset.checked_add(bytes.len() as u64).ok_or(Errno(libc::EFBIG))?;
        if end > self.resolved.profile.max_object_size {
            return Err(Errno(libc::EFBIG));
        }
        self.staging_room(end.saturating_sub(f.size).max(bytes.len() as u64))
            .await?;
        f.write(offset, bytes, &self.staging_dir()).map_err(|e| {
            tracing::warn!(
                "write to {:?}: staging file under {}: {e}",
                f.key,
                self.staging_dir().display()
            );
            io_errno(&e)
        })?;
        self.touch_node(file.ino, f.size);
        let metadata = self.metadata_for(file.ino);
        self.uploader.stream_parts(&mut f, &metadata).await;
        Ok(bytes.len() as u32)
    }

    /// Truncates `ino`'s local data `data`, unless the last release of a handle dropped it
    /// (clean) since its lookup: that release removes it under the data's lock, so the
    /// check under that lock is final, and data made dirty here is never dropped.
    pub(super) async fn truncate_data(
        &self,
        ino: u64,
        data: &Arc<tokio::sync::Mutex<FileData>>,
        size: u64,
    ) -> FsResult<Truncated> {
        if size > self.resolved.profile.max_object_size {
            return Err(Errno(libc::EFBIG));
        }
        let mut f = data.lock().await;
        if !self.handles.holds_data(ino, data) {
            return Ok(Truncated::Dropped);
        }
        let changed = f.size != size;
        f.truncate(size).map_err(|e| io_errno(&e))?;
        drop(f);
        // O_TRUNC of an empty file changes nothing, not even the mtime.
        if changed {
            self.touch_node(ino, size);
        }
        Ok(Truncated::Done)
    }
}

/// What `truncate_data` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Truncated {
    Done,
    /// The data was no longer the inode's: nothing changed, look it up again.
    Dropped,
}
