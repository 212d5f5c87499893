//! A file with local changes: the bytes written locally over a remote base object.
//! Whatever was not written reads from the base (below `base_limit`) or as zeros.

use super::blocks::{BlockCache, ObjectVersion, Prefetch};
use super::content::{Content, MemoryBudget, UploadedStaging};
use super::part_gather::{GatheredPart, PartGather};
use super::ranges::RangeSet;
use super::upload::Streaming;
use crate::store::{StoreError, StoreResult};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Where the bytes of a range come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Local(Range<u64>),
    Base(Range<u64>),
    Zero(Range<u64>),
}

pub struct FileData {
    /// The key the data will be uploaded to.
    pub key: String,
    pub base: Option<ObjectVersion>,
    /// Bytes at or past this offset never come from the base (the file was truncated).
    pub base_limit: u64,
    pub size: u64,
    content: Content,
    local: RangeSet,
    /// The content differs from the remote object.
    pub dirty: bool,
    pub streaming: Option<Streaming>,
    /// The next parts of a file written in order, kept in memory for the streamed upload.
    gather: Option<PartGather>,
    /// The journal record that makes this data survive a crash, once written.
    pub journal: Option<super::journal::RecordRef>,
    /// The record describes the data as it is (no write or truncate since).
    pub journal_current: bool,
    /// The metadata a crashed run journaled, for data recovered without an inode.
    pub recovered_metadata: Option<crate::store::Metadata>,
    budget: Arc<MemoryBudget>,
}

impl FileData {
    pub fn new(key: String, base: Option<ObjectVersion>, budget: Arc<MemoryBudget>) -> FileData {
        let size = base.as_ref().map_or(0, |b| b.size);
        FileData {
            key,
            base_limit: size,
            size,
            base,
            content: Content::new(budget.clone()),
            local: RangeSet::default(),
            dirty: false,
            streaming: None,
            gather: None,
            journal: None,
            journal_current: false,
            recovered_metadata: None,
            budget,
        }
    }

    /// Data left by a crashed run: the staging file and what of it is local.
    pub fn recovered(r: &super::journal::Record, content: Content, budget: Arc<MemoryBudget>) -> FileData {
        let mut local = RangeSet::default();
        for &(start, end) in &r.local {
            local.insert(start..end);
        }
        FileData {
            key: r.key.clone(),
            base: r.base.as_ref().map(|b| ObjectVersion {
                key: Arc::from(b.key.as_str()),
                etag: Arc::from(b.etag.as_str()),
                size: b.size,
            }),
            base_limit: r.base_limit,
            size: r.size,
            content,
            local,
            dirty: true,
            streaming: None,
            gather: None,
            journal: None,
            journal_current: false,
            recovered_metadata: Some(r.metadata.clone()),
            budget,
        }
    }

    /// The local ranges, for the journal.
    pub fn local_ranges(&self) -> Vec<(u64, u64)> {
        self.local.spans().collect()
    }

    /// Another handle on the staging file, if the content is staged.
    pub fn staging_file(&self) -> Option<std::fs::File> {
        self.content.staging_file()
    }

    /// The local bytes, if held in memory.
    pub fn bytes_in_memory(&self) -> Option<&[u8]> {
        self.content.in_memory()
    }

    /// Makes the local bytes durable on disk; returns the staging file.
    pub fn stage(&mut self, staging_dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
        self.content.stage(staging_dir)
    }

    pub fn write(&mut self, offset: u64, data: &[u8], staging_dir: &Path) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.content.write_at(offset, data, staging_dir)?;
        if let Some(g) = &mut self.gather
            && g.write(offset, data).is_err()
        {
            self.gather = None;
        }
        let end = offset + data.len() as u64;
        if let Some(s) = &mut self.streaming {
            s.changed_from(offset);
        }
        self.local.insert(offset..end);
        self.size = self.size.max(end);
        self.dirty = true;
        self.journal_current = false;
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) -> std::io::Result<()> {
        if size < self.size {
            self.gather = None;
            self.content.truncate(size)?;
            self.local.truncate(size);
            self.base_limit = self.base_limit.min(size);
            if let Some(s) = &mut self.streaming {
                s.changed_from(size);
            }
        }
        if size != self.size {
            self.dirty = true;
            self.journal_current = false;
        }
        self.size = size;
        Ok(())
    }

    /// True when nothing of the base is needed any more (a new file, or truncated to 0).
    pub fn independent_of_base(&self) -> bool {
        self.base.is_none() || self.base_limit == 0
    }

    /// Whether `range` is untouched base data (it can be copied server-side).
    pub fn is_pure_base(&self, range: Range<u64>) -> bool {
        let base_end = self.base.as_ref().map_or(0, |b| b.size).min(self.base_limit);
        range.end <= base_end && !self.local.intersects(range)
    }

    pub fn pieces(&self, range: Range<u64>) -> Vec<Piece> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Vec::new();
        }
        let base_end = self.base.as_ref().map_or(0, |b| b.size).min(self.base_limit);
        let mut out = Vec::new();
        for (r, local) in self.local.split(range.start..end) {
            if local {
                out.push(Piece::Local(r));
            } else if r.end <= base_end {
                out.push(Piece::Base(r));
            } else if r.start >= base_end {
                out.push(Piece::Zero(r));
            } else {
                out.push(Piece::Base(r.start..base_end));
                out.push(Piece::Zero(base_end..r.end));
            }
        }
        out
    }

    /// The file's bytes in `range` (clamped to its size).
    pub async fn read(&self, range: Range<u64>, blocks: &Arc<BlockCache>) -> StoreResult<Vec<u8>> {
        let mut out = Vec::with_capacity((range.end.min(self.size).saturating_sub(range.start)) as usize);
        for piece in self.pieces(range) {
            match piece {
                Piece::Local(r) => out.extend(self.read_local(r)?),
                Piece::Zero(r) => out.resize(out.len() + (r.end - r.start) as usize, 0),
                Piece::Base(r) => {
                    let base = self
                        .base
                        .as_ref()
                        .ok_or_else(|| StoreError::Other("no base object".into()))?;
                    out.extend_from_slice(&blocks.read(base, r.clone(), Prefetch::none()).await?);
                }
            }
        }
        Ok(out)
    }

    pub fn is_gathering(&self) -> bool {
        self.gather.is_some()
    }

    /// Gathers the next parts in memory as they are written.
    pub fn gather(&mut self, gather: PartGather) {
        self.gather = Some(gather);
    }

    /// The whole part at `start`, if it was gathered in memory as it was written.
    pub fn take_gathered(&mut self, start: u64) -> Option<GatheredPart> {
        self.gather.as_mut()?.take(start)
    }

    /// Stops gathering parts (the streamed upload ended or went wrong).
    pub fn stop_gathering(&mut self) {
        self.gather = None;
    }

    pub fn read_local(&self, r: Range<u64>) -> StoreResult<Vec<u8>> {
        self.content
            .read_at(r.start, (r.end - r.start) as usize)
            .map_err(|e| StoreError::Other(format!("staging file: {e}")))
    }

    /// After a successful upload: the new object is the base and nothing is local, all
    /// at once (no state where ranges count as local while their bytes are gone). The
    /// staging file, if any, is handed back still on disk: the caller removes it once the
    /// journal record naming it is gone (`Journal::uploaded`).
    pub fn uploaded(&mut self, new_base: ObjectVersion) -> Option<UploadedStaging> {
        self.local = RangeSet::default();
        self.base_limit = new_base.size;
        self.size = new_base.size;
        self.base = Some(new_base);
        self.dirty = false;
        self.gather = None;
        self.content.clear(&self.budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(base_size: u64) -> FileData {
        let base = ObjectVersion {
            key: "k".into(),
            etag: "e".into(),
            size: base_size,
        };
        FileData::new("k".into(), Some(base), MemoryBudget::new(1 << 20, 1 << 20))
    }

    #[test]
    fn pieces_combine_local_base_and_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = data(100);
        f.write(10, &[1; 10], dir.path()).unwrap();
        assert_eq!(
            f.pieces(0..100),
            vec![Piece::Base(0..10), Piece::Local(10..20), Piece::Base(20..100)]
        );
        f.truncate(50).unwrap();
        f.truncate(120).unwrap();
        assert_eq!(f.pieces(40..200), vec![Piece::Base(40..50), Piece::Zero(50..120)]);
        assert!(f.is_pure_base(20..50) && !f.is_pure_base(0..20) && !f.is_pure_base(40..60));
        f.write(130, &[2; 5], dir.path()).unwrap();
        assert_eq!(f.pieces(118..140), vec![Piece::Zero(118..130), Piece::Local(130..135)]);
    }
}
