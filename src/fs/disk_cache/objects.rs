//! The disk cache's whole-object files: a large object's blocks written at their own
//! offsets into one file (`{seq:016x}.obj`), with an index of the blocks it holds and
//! their CRC32s (`{seq:016x}.oix`). Once every block is in, the file is the object byte
//! for byte, and the kernel can read it directly for a reader of the mounted file (FUSE
//! passthrough), at the local disk's speed, without a request to the daemon; a segment's
//! records, each behind its header page, cannot be handed over that way.

use super::segments::numbered;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"S3VOBJ1\0";
const ENTRY_BYTES: usize = 8 + 4;

/// What an object file holds, as its index says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIndex {
    /// The object's identity: bucket, key and ETag, NUL-separated.
    pub identity: String,
    pub size: u64,
    pub block_size: u64,
    /// Every block is in, the file is cut to the object's size and flushed to the disk.
    pub complete: bool,
    /// (block index, CRC32 of its data) of the blocks written.
    pub blocks: Vec<(u64, u32)>,
}

impl ObjectIndex {
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// The length of block `index`'s data.
    pub fn block_len(&self, index: u64) -> u64 {
        self.block_size
            .min(self.size.saturating_sub(index.saturating_mul(self.block_size)))
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(64 + self.identity.len() + self.blocks.len() * ENTRY_BYTES);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.identity.len() as u32).to_le_bytes());
        bytes.extend_from_slice(self.identity.as_bytes());
        bytes.extend_from_slice(&self.size.to_le_bytes());
        bytes.extend_from_slice(&self.block_size.to_le_bytes());
        bytes.push(u8::from(self.complete));
        for (index, crc) in &self.blocks {
            bytes.extend_from_slice(&index.to_le_bytes());
            bytes.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes).to_le_bytes();
        bytes.extend_from_slice(&crc);
        bytes
    }

    /// An index read back, if intact and consistent: blocks within the object, none twice,
    /// all of them if it says complete, the file as long as what it lists.
    fn decode(bytes: &[u8], file_len: u64) -> Option<ObjectIndex> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let rest = body.strip_prefix(MAGIC)?;
        let (len, rest) = rest.split_at_checked(4)?;
        let (identity, rest) = rest.split_at_checked(u32::from_le_bytes(len.try_into().ok()?) as usize)?;
        let (size, rest) = rest.split_at_checked(8)?;
        let (block_size, rest) = rest.split_at_checked(8)?;
        let (complete, rest) = rest.split_first()?;
        let mut index = ObjectIndex {
            identity: String::from_utf8(identity.to_vec()).ok()?,
            size: u64::from_le_bytes(size.try_into().ok()?),
            block_size: u64::from_le_bytes(block_size.try_into().ok()?),
            complete: *complete == 1,
            blocks: Vec::new(),
        };
        if index.block_size == 0 || !index.block_size.is_multiple_of(4096) || !rest.len().is_multiple_of(ENTRY_BYTES) {
            return None;
        }
        let count = index.block_count();
        let mut seen = std::collections::HashSet::new();
        for e in rest.chunks_exact(ENTRY_BYTES) {
            let block = u64::from_le_bytes(e[..8].try_into().ok()?);
            let end = block
                .checked_mul(index.block_size)?
                .checked_add(index.block_len(block))?;
            if block >= count || end > file_len || !seen.insert(block) {
                return None;
            }
            index.blocks.push((block, u32::from_le_bytes(e[8..].try_into().ok()?)));
        }
        let whole = index.blocks.len() as u64 == count && file_len == index.size;
        (!index.complete || whole).then_some(index)
    }
}

/// An object file found at mount time.
pub struct FoundObject {
    pub seq: u64,
    /// Bytes it takes in the cache's budget: the whole object's, allocated at its start.
    pub len: u64,
    pub index: ObjectIndex,
}

pub fn object_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.obj"))
}

fn index_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.oix"))
}

/// Whether `name` is one of this module's files (the segments' loader leaves them).
pub fn is_object_file(name: &str) -> bool {
    name.ends_with(".obj") || name.ends_with(".oix")
}

/// Writes object file `seq`'s index (temporary file, rename). `durable` for the index
/// that says complete, written after the file's data was flushed: a passthrough reader
/// gets no CRC check, so a crash must never leave a complete index over torn data.
pub fn write_index(dir: &Path, seq: u64, index: &ObjectIndex, durable: bool) -> std::io::Result<()> {
    crate::cache_dir::replace_file(&index_path(dir, seq), &index.encode(), durable)
}

/// The object files under `dir` with an intact index; any other (a file whose index was
/// never written or is damaged, an index without its file) is removed.
pub fn load(dir: &Path) -> std::io::Result<Vec<FoundObject>> {
    let mut found = Vec::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(seq) = numbered(&name, ".oix") {
            indexes.push(seq);
            continue;
        }
        let Some(seq) = numbered(&name, ".obj") else {
            continue;
        };
        let file_len = entry.metadata().map_or(0, |m| m.len());
        let index = std::fs::read(index_path(dir, seq))
            .ok()
            .and_then(|bytes| ObjectIndex::decode(&bytes, file_len));
        match index {
            Some(index) => {
                // Allocated whole when it was started.
                let len = crate::fs::block_buffers::round_up(usize::try_from(index.size).unwrap_or(usize::MAX)) as u64;
                found.push(FoundObject { seq, len, index });
            }
            None => remove(dir, seq),
        }
    }
    for seq in indexes {
        if !found.iter().any(|f| f.seq == seq) {
            let _ = std::fs::remove_file(index_path(dir, seq));
        }
    }
    found.sort_by_key(|f| f.seq);
    Ok(found)
}

/// Gives object file `from` the number `to` (the file and its index).
pub fn renumber(dir: &Path, from: u64, to: u64) -> std::io::Result<()> {
    std::fs::rename(object_path(dir, from), object_path(dir, to))?;
    std::fs::rename(index_path(dir, from), index_path(dir, to))
}

pub fn remove(dir: &Path, seq: u64) {
    let _ = std::fs::remove_file(object_path(dir, seq));
    let _ = std::fs::remove_file(index_path(dir, seq));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(complete: bool, blocks: Vec<(u64, u32)>) -> ObjectIndex {
        ObjectIndex {
            identity: "b\0k\0e".into(),
            size: 3 * 4096 + 10,
            block_size: 4096,
            complete,
            blocks,
        }
    }

    #[test]
    fn an_index_round_trips_and_a_damaged_or_inconsistent_one_is_not_trusted() {
        let whole = index(true, vec![(0, 1), (1, 2), (2, 3), (3, 4)]);
        let size = whole.size;
        assert_eq!(ObjectIndex::decode(&whole.encode(), size), Some(whole.clone()));
        assert_eq!(
            ObjectIndex::decode(&whole.encode(), size + 1),
            None,
            "complete, wrong length"
        );
        let partial = index(false, vec![(3, 4), (0, 1)]);
        assert_eq!(ObjectIndex::decode(&partial.encode(), size), Some(partial.clone()));
        assert_eq!(
            ObjectIndex::decode(&partial.encode(), 4096),
            None,
            "a block past the end"
        );
        for bad in [
            index(true, vec![(0, 1)]),
            index(false, vec![(4, 1)]),
            index(false, vec![(1, 1), (1, 1)]),
            ObjectIndex {
                block_size: 0,
                ..index(false, vec![])
            },
            ObjectIndex {
                block_size: 100,
                ..index(false, vec![])
            },
        ] {
            assert_eq!(ObjectIndex::decode(&bad.encode(), size), None, "{bad:?}");
        }
        let mut flipped = partial.encode();
        flipped[12] ^= 1;
        assert_eq!(ObjectIndex::decode(&flipped, size), None);
        for junk in [&[][..], &[1, 2, 3], &MAGIC[..], &[0xff; 64]] {
            assert_eq!(ObjectIndex::decode(junk, size), None);
        }
    }

    #[test]
    fn load_keeps_indexed_files_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let partial = index(false, vec![(1, 9)]);
        std::fs::write(object_path(d, 4), vec![0u8; 2 * 4096]).unwrap();
        write_index(d, 4, &partial, false).unwrap();
        std::fs::write(object_path(d, 5), b"never indexed").unwrap();
        std::fs::write(index_path(d, 6), b"an index without its file").unwrap();
        std::fs::write(d.join("0000000000000001.seg"), b"").unwrap();
        let found = load(d).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].seq, found[0].len), (4, 4 * 4096));
        assert_eq!(found[0].index, partial);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "0000000000000001.seg".to_string(),
                format!("{:016x}.obj", 4),
                format!("{:016x}.oix", 4)
            ]
        );
    }
}
