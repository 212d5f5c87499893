//! The persistent block cache: hits after a remount, ETag changes, corruption, the size
//! bound, concurrent readers, two mounts on one directory, `s3vol cache clear`.

use crate::common;

use common::{Mount, eventually, pattern, put, server};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every block record in a cache directory's segments: (segment, offset, data length).
/// A record is a header page (magic, identity length and identity, data length, CRC)
/// and its data padded to whole pages; a segment's records follow one another.
fn records(cache: &Path) -> Vec<(PathBuf, u64, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(cache.join("blocks")) else {
        return out;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        let mut at = 0usize;
        while let Some(header) = bytes.get(at..at + PAGE).filter(|h| h.starts_with(b"S3VBLK2\0")) {
            let id_len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
            let len = u64::from_le_bytes(header[12 + id_len..20 + id_len].try_into().unwrap());
            out.push((path.clone(), at as u64, len));
            at += PAGE + (len as usize).div_ceil(PAGE) * PAGE;
        }
    }
    out
}

const PAGE: usize = 4096;

/// A large object's file in a cache directory, as its index (`.oix`) describes it.
pub struct ObjectFile {
    pub size: u64,
    /// Every block is in and flushed: the kernel may read the file directly.
    pub complete: bool,
    pub blocks: usize,
}

/// The object files of a cache directory. An index is magic, identity length and
/// identity, object size, block size, the complete flag, 12 bytes per block, CRC32.
pub fn object_files(cache: &Path) -> Vec<ObjectFile> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(cache.join("blocks")) else {
        return out;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "oix") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        let Some(id_len) = bytes
            .get(8..12)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
        else {
            continue;
        };
        let at = 12 + id_len;
        let (Some(size), Some(complete)) = (bytes.get(at..at + 8), bytes.get(at + 16)) else {
            continue;
        };
        out.push(ObjectFile {
            size: u64::from_le_bytes(size.try_into().unwrap()),
            complete: *complete == 1,
            blocks: (bytes.len().saturating_sub(at + 17 + 4)) / 12,
        });
    }
    out
}

/// Blocks on disk: records in segments and blocks listed by object files' indexes.
fn blocks_on_disk(cache: &Path) -> usize {
    records(cache).len() + object_files(cache).iter().map(|o| o.blocks).sum::<usize>()
}

/// Background writes land shortly after the reads; wait for `n` blocks on disk.
fn wait_for_blocks(cache: &Path, n: usize) {
    assert!(
        eventually(Duration::from_secs(20), || blocks_on_disk(cache) >= n),
        "{} of {n} blocks written",
        blocks_on_disk(cache)
    );
}

/// Puts `data` at `key`, reads it through a mount on `cache` until every block is on
/// disk, and mounts again on it: the new mount, and the GETs the server counted so far.
fn cached_then_remounted(
    s: &s3vol::server::RunningServer,
    cache: &Path,
    key: &str,
    data: &[u8],
    extra: &[&str],
) -> (Mount, u64) {
    put(s, key, data.to_vec());
    let m = Mount::with_cache(s, cache, &[]);
    assert!(std::fs::read(m.join(key)).unwrap() == data);
    wait_for_blocks(cache, data.len().div_ceil(1 << 20));
    m.unmount();
    (Mount::with_cache(s, cache, extra), s.stats().count("GetObject"))
}

#[test]
fn blocks_are_served_from_disk_after_a_remount() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(8 << 20, 3);
    let cache = tempfile::tempdir().unwrap();
    let (m, gets) = cached_then_remounted(&s, cache.path(), "weights.bin", &data, &[]);
    assert!(std::fs::read(m.join("weights.bin")).unwrap() == data);
    assert_eq!(s.stats().count("GetObject"), gets, "no GET: every block came from disk");

    // A new version of the object is never served from the old blocks.
    let new = pattern(8 << 20, 4);
    put(&s, "weights.bin", new.clone());
    m.unmount();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert!(std::fs::read(m.join("weights.bin")).unwrap() == new);
    assert!(s.stats().count("GetObject") > gets);
    drop(m);
}

/// A file the disk cache holds, read at random after a remount (a model loaded again,
/// tensors in a shuffled order), is read from the disk as the reader asks: it is not read
/// back whole ahead of the reads, as a file fetched from the bucket is. Read back ahead,
/// a file larger than memory raced the reader for the disk and evicted what it was about
/// to read (a shuffled 1 GiB load: 0.7 against 1.4 GiB/s in file order).
#[test]
fn a_file_on_disk_read_at_random_is_not_read_back_whole() {
    use std::os::unix::fs::FileExt;
    let _turn = common::shared();
    let s = server();
    let data = pattern(48 << 20, 5);
    let cache = tempfile::tempdir().unwrap();
    // Read through s3vol: the kernel would read the whole cached file by itself.
    let (m, gets) = cached_then_remounted(&s, cache.path(), "model.bin", &data, &["--passthrough", "false"]);
    let file = std::fs::File::open(m.join("model.bin")).unwrap();
    // Small reads 4 MiB apart, enough jumps for the file to count as read at random.
    let tensor = 64usize << 10;
    for i in [9, 2, 6, 0, 11, 5] {
        let (mut buf, at) = (vec![0u8; tensor], i * (4usize << 20));
        file.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf == data[at..at + tensor], "tensor {i} differs");
    }
    std::thread::sleep(Duration::from_millis(1000));
    let hits = m.status_count("disk_hits");
    assert!(
        hits <= 16,
        "{hits} blocks read from disk for 6 reads of 64 KiB: read back ahead"
    );
    assert_eq!(s.stats().count("GetObject"), gets, "no GET: every block is on disk");
}

/// A file read at random is fetched whole; a block every byte of which has gone to the
/// kernel leaves memory once the disk cache keeps it (the page cache has it for every
/// reader), so that memory holds the blocks read in part and those fetched ahead. Read
/// again past the page cache, those blocks come from the disk, never the network.
#[test]
fn blocks_of_a_file_read_at_random_served_whole_leave_memory_for_the_disk() {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    const MIB: usize = 1 << 20;
    let _turn = common::shared();
    let s = server();
    let data = pattern(48 * MIB, 7);
    put(&s, "model.bin", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    let file = std::fs::File::open(m.join("model.bin")).unwrap();
    // Every block whole, in a shuffled order (29 and 48 are coprime).
    let order: Vec<usize> = (0..48).map(|i| i * 29 % 48).collect();
    let read_all = || {
        for &i in &order {
            let mut buf = vec![0u8; MIB];
            file.read_exact_at(&mut buf, (i * MIB) as u64).unwrap();
            assert!(buf == data[i * MIB..(i + 1) * MIB], "block {i} differs");
        }
    };
    read_all();
    wait_for_blocks(cache.path(), 48);
    // The blocks read before the file counted as read at random, and their read-ahead,
    // stay in memory.
    let held = m.status_count("cache_bytes");
    assert!(
        held <= 16 * MIB as u64,
        "{} MiB of blocks still in memory",
        held / MIB as u64
    );
    let (gets, disk_hits) = (s.stats().count("GetObject"), m.status_count("disk_hits"));
    // SAFETY: advice on an open descriptor; it only drops the file's clean cached pages.
    let dropped = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(dropped, 0);
    read_all();
    assert_eq!(
        s.stats().count("GetObject"),
        gets,
        "read again from the disk, not the network"
    );
    let from_disk = m.status_count("disk_hits") - disk_hits;
    assert!(
        from_disk >= 32,
        "{from_disk} blocks from the disk: the page cache answered"
    );
}

#[test]
fn a_corrupt_block_is_dropped_and_refetched() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(2 << 20, 5);
    put(&s, "f", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    std::fs::read(m.join("f")).unwrap();
    wait_for_blocks(cache.path(), 2);
    m.unmount();
    for (segment, offset, len) in records(cache.path()) {
        let mut raw = std::fs::read(&segment).unwrap();
        raw[(offset + PAGE as u64 + len - 1) as usize] ^= 0xff;
        std::fs::write(&segment, raw).unwrap();
    }
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert!(
        std::fs::read(m.join("f")).unwrap() == data,
        "corrupt blocks are never served"
    );
    assert!(m.unmount().contains("corrupt"));
}

#[test]
fn the_cache_stays_within_its_size_under_a_larger_workload() {
    let _turn = common::shared();
    let s = server();
    for i in 0..6 {
        put(&s, &format!("f{i}"), pattern(3 << 20, i));
    }
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with_cache(&s, cache.path(), &["--cache-size", "5MiB"]);
    for i in 0..6 {
        assert!(std::fs::read(m.join(&format!("f{i}"))).unwrap() == pattern(3 << 20, i));
        std::thread::sleep(Duration::from_millis(100));
        let total: u64 = std::fs::read_dir(cache.path().join("blocks"))
            .unwrap()
            .flatten()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum();
        assert!(total <= 5 << 20, "{total} bytes on disk after file {i}");
    }
    drop(m);
}

#[test]
fn concurrent_readers_share_the_disk_cache() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(6 << 20, 8);
    put(&s, "shared", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    std::fs::read(m.join("shared")).unwrap();
    wait_for_blocks(cache.path(), 6);
    m.unmount();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| assert!(std::fs::read(m.join("shared")).unwrap() == data));
        }
    });
}

#[test]
fn two_mounts_on_one_cache_dir_and_cache_clear() {
    let _turn = common::shared();
    let s = server();
    put(&s, "f", pattern(1 << 20, 1));
    let cache = tempfile::tempdir().unwrap();
    let first = Mount::with_cache(&s, cache.path(), &[]);
    let second = Mount::with_cache(&s, cache.path(), &[]);
    std::fs::read(first.join("f")).unwrap();
    std::fs::read(second.join("f")).unwrap();
    wait_for_blocks(cache.path(), 1);
    wait_for_blocks(&cache.path().join("mount-2"), 1);
    assert!(second.unmount().contains("in use by another mount"));
    let remembered = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("metadata-"))
            .count()
    };
    assert_eq!(remembered(&cache.path().join("mount-2")), 1, "what its HEAD of f found");

    // Cleared while `first` is mounted (through it) and for the unmounted instance.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["cache", "clear", "--cache-dir", cache.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("cleared by the mount"), "{text}");
    assert!(records(cache.path()).is_empty());
    assert!(records(&cache.path().join("mount-2")).is_empty());
    assert_eq!(
        remembered(&cache.path().join("mount-2")),
        0,
        "the remembered metadata too"
    );
    // Still readable: refetched.
    assert!(std::fs::read(first.join("f")).unwrap() == pattern(1 << 20, 1));
    drop(first);
}

/// What HEADs of listed files found is kept in the cache directory: after a remount an
/// `ls -l` of an unchanged directory sends none of those HEADs and shows the same modes;
/// an object rewritten since (here the same bytes with another mode, as a chmod by
/// another client: its LastModified moves) is HEADed again and shows its new mode.
#[test]
fn a_remount_recalls_what_heads_found_until_the_object_changes() {
    use std::os::unix::fs::MetadataExt;
    let _turn = common::shared();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    const FILES: usize = 20;
    let put_mode = |i: usize, mode: &str| {
        let key = format!("d/f{i:02}");
        s.backend()
            .put_object(common::BUCKET, &key, vec![i as u8; 10], &[("mode", mode)])
            .unwrap();
    };
    for i in 0..FILES {
        put_mode(i, "33261");
    }
    let ls_l = |m: &Mount| -> Vec<u32> {
        let mut names: Vec<_> = std::fs::read_dir(m.join("d"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::symlink_metadata(p).unwrap().mode())
            .collect()
    };
    let m = Mount::with_cache(&s, cache.path(), &[]);
    s.stats().reset();
    let first = ls_l(&m);
    let heads_first = s.stats().count("HeadObject");
    assert_eq!(first, vec![0o100755; FILES]);
    m.unmount();

    let m = Mount::with_cache(&s, cache.path(), &[]);
    s.stats().reset();
    assert_eq!(ls_l(&m), first, "{}", m.log());
    let heads_again = s.stats().count("HeadObject");
    assert!(
        heads_again + FILES as u64 <= heads_first,
        "no HEAD of an unchanged file: {heads_first} HEADs, then {heads_again}"
    );
    m.unmount();

    // LastModified counts in whole seconds.
    std::thread::sleep(Duration::from_millis(1100));
    put_mode(3, "33216");
    let m = Mount::with_cache(&s, cache.path(), &[]);
    s.stats().reset();
    let mut expected = first.clone();
    expected[3] = 0o100700;
    assert_eq!(ls_l(&m), expected, "{}", m.log());
    assert_eq!(s.stats().count("HeadObject"), heads_again + 1, "only the changed file");
    m.unmount();
}
