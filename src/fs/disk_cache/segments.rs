//! The disk cache's files: numbered segments (`{seq:016x}.seg`) that records are appended
//! to, and for each segment once filled an index of its records (`{seq:016x}.idx`), so
//! that a mount finds what earlier mounts left without reading every record's header.
//! One file per block cost ext4 about 0.4 ms of kernel CPU per block to create (10,000
//! small files: 4 s of the daemon's CPU); appending to a segment costs 0.03 ms.

use super::record::scan_header;
use crate::fs::block_buffers::DATA_OFFSET;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A block's name: the MD5 of its identity.
pub type Name = [u8; 16];

const INDEX_MAGIC: &[u8; 8] = b"S3VIDX1\0";
/// Segment numbers at or above this are not s3vol's (it counts up from 0): such a file is
/// removed, so that the next number can never overflow.
const SEQ_LIMIT: u64 = 1 << 48;
const ENTRY_BYTES: usize = 16 + 8 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub name: Name,
    pub offset: u64,
    pub size: u64,
}

/// A segment found on disk: its number, length and records.
pub struct Found {
    pub seq: u64,
    pub len: u64,
    pub entries: Vec<Entry>,
    /// Whether its index file listed them (else its headers were read).
    pub indexed: bool,
}

pub fn name_of(identity: &[u8]) -> Name {
    use md5::Digest;
    md5::Md5::digest(identity).into()
}

/// The number of a cache file named `{seq:016x}{ext}`, if `name` is one.
pub(super) fn numbered(name: &str, ext: &str) -> Option<u64> {
    name.strip_suffix(ext)
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .filter(|seq| *seq < SEQ_LIMIT)
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

fn index_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.idx"))
}

/// Opens a segment for reading, or creates it for appending, with O_DIRECT if `direct`
/// and the filesystem takes it (tmpfs does not): blocks go to and from their aligned
/// buffers without a copy through the page cache.
pub fn open(path: &Path, create: bool, direct: bool) -> std::io::Result<File> {
    let open = |flags| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).custom_flags(flags);
        if create {
            o.write(true).create_new(true).mode(0o600);
        }
        o.open(path)
    };
    match open(if direct { libc::O_DIRECT } else { 0 }) {
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => open(0),
        other => other,
    }
}

/// The segments under `dir`, oldest first, with their records. Anything else found there
/// but whole-object files (the one-file-per-block layout of earlier versions, a
/// temporary file of a crashed write, an index without its segment) is removed.
pub fn load(dir: &Path) -> std::io::Result<Vec<Found>> {
    let mut segments = Vec::new();
    let mut indexes = Vec::new();
    let mut old_layout = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match (numbered(&name, ".seg"), numbered(&name, ".idx")) {
            (Some(seq), _) => segments.push((seq, entry.metadata().map_or(0, |m| m.len()))),
            (_, Some(seq)) => indexes.push(seq),
            _ if super::objects::is_object_file(&name) => {}
            _ if entry.file_type().is_ok_and(|t| t.is_dir()) => old_layout.push(entry.path()),
            _ => {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if !old_layout.is_empty() {
        tracing::info!(
            "disk cache: removing the blocks of an earlier layout (a file per block) under {}",
            dir.display()
        );
        for path in old_layout {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    for seq in indexes {
        if !segments.iter().any(|(s, _)| *s == seq) {
            let _ = std::fs::remove_file(index_path(dir, seq));
        }
    }
    segments.sort();
    Ok(segments
        .into_iter()
        .map(|(seq, len)| match read_index(&index_path(dir, seq), len) {
            Some(entries) => Found {
                seq,
                len,
                entries,
                indexed: true,
            },
            None => Found {
                seq,
                len,
                entries: scan(&segment_path(dir, seq), len),
                indexed: false,
            },
        })
        .collect())
}

/// The records of a segment without an index (the one being filled when its mount
/// ended), read header by header up to the first that is not one (a write cut short).
fn scan(path: &Path, len: u64) -> Vec<Entry> {
    let mut entries = Vec::new();
    let Ok(file) = File::open(path) else {
        return entries;
    };
    let mut page = vec![0u8; DATA_OFFSET];
    let mut offset = 0u64;
    while offset < len {
        if file.read_exact_at(&mut page, offset).is_err() {
            break;
        }
        let Some((identity, size)) = scan_header(&page) else {
            break;
        };
        match offset.checked_add(size).filter(|end| *end <= len) {
            Some(end) => {
                entries.push(Entry {
                    name: name_of(identity),
                    offset,
                    size,
                });
                offset = end;
            }
            None => break,
        }
    }
    entries
}

/// A segment's index, if it is intact and every record it lists lies within the segment.
fn read_index(path: &Path, segment_len: u64) -> Option<Vec<Entry>> {
    let bytes = std::fs::read(path).ok()?;
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let rest = body.strip_prefix(INDEX_MAGIC)?;
    if !rest.len().is_multiple_of(ENTRY_BYTES) {
        return None;
    }
    rest.chunks_exact(ENTRY_BYTES)
        .map(|e| {
            let entry = Entry {
                name: e[..16].try_into().ok()?,
                offset: u64::from_le_bytes(e[16..24].try_into().ok()?),
                size: u64::from_le_bytes(e[24..32].try_into().ok()?),
            };
            let end = entry.offset.checked_add(entry.size)?;
            (end <= segment_len && entry.offset.is_multiple_of(DATA_OFFSET as u64)).then_some(entry)
        })
        .collect()
}

/// Writes segment `seq`'s index (temporary file, rename: a crash leaves none or a whole
/// one, and a torn one fails its CRC).
pub fn write_index(dir: &Path, seq: u64, entries: &[Entry]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(INDEX_MAGIC.len() + entries.len() * ENTRY_BYTES + 4);
    bytes.extend_from_slice(INDEX_MAGIC);
    for e in entries {
        bytes.extend_from_slice(&e.name);
        bytes.extend_from_slice(&e.offset.to_le_bytes());
        bytes.extend_from_slice(&e.size.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes).to_le_bytes();
    bytes.extend_from_slice(&crc);
    // Not flushed: a damaged index fails its CRC and the segment is scanned instead.
    crate::cache_dir::replace_file(&index_path(dir, seq), &bytes, false)
}

/// Removes segment `seq` and its index.
pub fn remove(dir: &Path, seq: u64) {
    let _ = std::fs::remove_file(segment_path(dir, seq));
    let _ = std::fs::remove_file(index_path(dir, seq));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, offset: u64) -> Entry {
        Entry {
            name: [n; 16],
            offset,
            size: 2 * DATA_OFFSET as u64,
        }
    }

    #[test]
    fn an_index_round_trips_and_a_damaged_one_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let entries = vec![entry(1, 0), entry(2, 8192)];
        write_index(dir.path(), 7, &entries).unwrap();
        let path = index_path(dir.path(), 7);
        assert_eq!(read_index(&path, 16384), Some(entries));
        assert_eq!(read_index(&path, 16383), None, "a record beyond the segment's end");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_index(&path, 16384), None);
        for junk in [&[][..], &[1, 2, 3], &INDEX_MAGIC[..]] {
            std::fs::write(&path, junk).unwrap();
            assert_eq!(read_index(&path, 16384), None);
        }
    }

    #[test]
    fn load_keeps_segments_and_clears_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("ab")).unwrap();
        std::fs::write(d.join("ab/0123"), b"a block of the old layout").unwrap();
        std::fs::write(d.join(".tmp-x"), b"").unwrap();
        std::fs::write(index_path(d, 9), b"an index without its segment").unwrap();
        std::fs::write(segment_path(d, 2), vec![0u8; 100]).unwrap();
        std::fs::write(segment_path(d, 1), b"").unwrap();
        std::fs::write(segment_path(d, u64::MAX), b"").unwrap();
        let found = load(d).unwrap();
        let seqs: Vec<(u64, u64, usize, bool)> = found
            .iter()
            .map(|f| (f.seq, f.len, f.entries.len(), f.indexed))
            .collect();
        assert_eq!(seqs, vec![(1, 0, 0, false), (2, 100, 0, false)]);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![format!("{:016x}.seg", 1), format!("{:016x}.seg", 2)]);
    }
}
