//! The persistent block cache: hits after a remount, ETag changes, corruption, the size
//! bound, concurrent readers, two mounts on one directory, `s3vol cache clear`.

use crate::common;

use common::{Mount, eventually, pattern, put, server};
use std::path::Path;
use std::time::Duration;

fn block_files(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(cache.join("blocks")) else {
        return out;
    };
    for sub in subdirs.flatten() {
        out.extend(std::fs::read_dir(sub.path()).unwrap().flatten().map(|e| e.path()));
    }
    out
}

/// Background writes land shortly after the reads; wait for `n` blocks on disk.
fn wait_for_blocks(cache: &Path, n: usize) {
    assert!(
        eventually(Duration::from_secs(20), || block_files(cache).len() >= n),
        "{} of {n} blocks written",
        block_files(cache).len()
    );
}

#[test]
fn blocks_are_served_from_disk_after_a_remount() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(8 << 20, 3);
    put(&s, "weights.bin", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert!(std::fs::read(m.join("weights.bin")).unwrap() == data);
    wait_for_blocks(cache.path(), 8);
    m.unmount();

    let gets = s.stats().count("GetObject");
    let m = Mount::with_cache(&s, cache.path(), &[]);
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
    for file in block_files(cache.path()) {
        let mut raw = std::fs::read(&file).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        std::fs::write(&file, raw).unwrap();
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
        let total: u64 = block_files(cache.path())
            .iter()
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

    // Cleared while `first` is mounted (through it) and for the unmounted instance.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["cache", "clear", "--cache-dir", cache.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("cleared by the mount"), "{text}");
    assert!(block_files(cache.path()).is_empty());
    assert!(block_files(&cache.path().join("mount-2")).is_empty());
    // Still readable: refetched.
    assert!(std::fs::read(first.join("f")).unwrap() == pattern(1 << 20, 1));
    drop(first);
}
