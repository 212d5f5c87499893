//! Crash safety: dirty data journaled under --cache-dir survives a SIGKILL of the daemon
//! and is uploaded by the next mount with the same cache directory.
//!
//! Every test runs `alone()`: another test's fork+exec closes inherited descriptors, and
//! that close sends FLUSH, which would upload before the kill; and one sets the umask.

use crate::common;

use common::{BUCKET, Mount, eventually, object, pattern, put, server};
use std::io::Write;
use std::time::Duration;

/// Writes `data` to `name` in a thread whose close() blocks on a slow server, kills the
/// daemon while the upload is in flight, and returns the cache directory.
fn kill_during_close(
    s: &s3vol::server::RunningServer,
    cache: &std::path::Path,
    name: &str,
    data: Vec<u8>,
    extra: &[&str],
) {
    let m = Mount::with_cache(s, cache, extra);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.join(name))
        .unwrap();
    f.write_all(&data).unwrap();
    // close() uploads through a slow server; the daemon dies first.
    s.quirks().set_latency(Duration::from_secs(3));
    let writer = std::thread::spawn(move || drop(f));
    std::thread::sleep(Duration::from_millis(800));
    let log = m.kill();
    let _ = writer.join();
    s.quirks().set_latency(Duration::ZERO);
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn data_written_before_a_crash_reaches_the_bucket_at_the_next_mount() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let data = pattern(3 << 20, 21);
    kill_during_close(&s, cache.path(), "survivor.bin", data.clone(), &[]);
    assert_eq!(
        object(&s, "survivor.bin"),
        None,
        "the upload did not finish before the kill"
    );
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert!(
        object(&s, "survivor.bin").as_deref() == Some(&data[..]),
        "recovered before serving"
    );
    assert!(std::fs::read(m.join("survivor.bin")).unwrap() == data);
    let log = m.unmount();
    assert!(log.contains("recovered \"survivor.bin\""), "{log}");
    let journal = cache.path().join("journal");
    assert_eq!(
        std::fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0),
        0,
        "journal emptied"
    );
}

#[test]
fn a_base_changed_remotely_meanwhile_gives_a_conflict_copy() {
    let _turn = common::alone();
    let s = server();
    put(&s, "shared.txt", "original");
    let cache = tempfile::tempdir().unwrap();
    kill_during_close(&s, cache.path(), "shared.txt", b"mine, written locally".to_vec(), &[]);
    put(&s, "shared.txt", "theirs, written by another pod");
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert_eq!(
        object(&s, "shared.txt").as_deref(),
        Some(&b"theirs, written by another pod"[..])
    );
    let keys = s.backend().keys(BUCKET);
    let conflict = keys
        .iter()
        .find(|k| k.starts_with("shared.txt.s3vol-conflict-"))
        .expect("a conflict copy");
    assert_eq!(object(&s, conflict).as_deref(), Some(&b"mine, written locally"[..]));
    drop(m);
}

#[test]
fn a_stale_multipart_upload_is_aborted_and_the_file_uploaded() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let data = pattern(12 << 20, 5);
    kill_during_close(&s, cache.path(), "big.bin", data.clone(), &["--part-size", "5MiB"]);
    assert!(
        !s.backend().pending_uploads(BUCKET).is_empty(),
        "a multipart upload was in flight"
    );
    let m = Mount::with_cache(&s, cache.path(), &["--part-size", "5MiB"]);
    assert!(
        s.backend().pending_uploads(BUCKET).is_empty(),
        "stale uploads are aborted"
    );
    assert!(object(&s, "big.bin").as_deref() == Some(&data[..]));
    drop(m);
}

/// The process umask, set until dropped; mounts started meanwhile inherit it.
struct Umask(nix::sys::stat::Mode);

impl Umask {
    fn set(mask: u32) -> Umask {
        Umask(nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask)))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}

/// Every path under `root` with its mode bits.
fn modes(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        }
        out.push((path, meta.mode() & 0o7777, meta.is_dir()));
    }
    out
}

#[test]
fn under_umask_0_the_cache_directory_blocks_staging_and_journal_are_private() {
    let _turn = common::alone();
    let _umask = Umask::set(0);
    let s = server();
    put(&s, "read.bin", pattern(2 << 20, 9));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let m = Mount::with_cache(&s, &cache, &[]);
    assert!(std::fs::read(m.join("read.bin")).unwrap() == pattern(2 << 20, 9));
    // Blocks are written to disk in the background.
    assert!(
        eventually(Duration::from_secs(20), || modes(&cache.join("blocks"))
            .iter()
            .any(|(_, _, dir)| !dir)),
        "no block reached the disk cache"
    );
    m.unmount();
    // Leaves a staging file and its journal record.
    kill_during_close(&s, &cache, "written.bin", pattern(3 << 20, 10), &[]);
    let all = modes(&cache);
    let under = |sub: &str| {
        all.iter()
            .filter(|(p, _, dir)| !dir && p.starts_with(cache.join(sub)))
            .count()
    };
    assert!(
        under("blocks") > 0 && under("staging") > 0 && under("journal") > 0,
        "{all:?}"
    );
    for (path, mode, dir) in &all {
        let want = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} has mode {mode:04o}", path.display());
    }
}

/// A journal record as a crashed mount of `endpoint` would have written it, naming
/// `staging` for `size` bytes of `key`.
fn craft_record(cache: &std::path::Path, endpoint: &str, key: &str, staging: &std::path::Path, size: u64) {
    let record = serde_json::json!({
        "bucket": BUCKET, "endpoint": endpoint, "key": key, "size": size, "base": null,
        "base_limit": 0, "local": [[0, size]], "staging": staging, "upload_id": null,
        "metadata": {},
    });
    std::fs::create_dir_all(cache.join("journal")).unwrap();
    std::fs::write(cache.join("journal/1-crafted.json"), record.to_string()).unwrap();
}

#[test]
fn a_record_naming_a_file_outside_the_staging_directory_is_refused() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("staging-1-passwd");
    std::fs::write(&secret, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    craft_record(cache.path(), &s.endpoint, "stolen", &secret, 32);
    let m = Mount::with_cache(&s, cache.path(), &[]);
    let log = m.unmount();
    assert!(log.contains("refused") && log.contains("outside"), "{log}");
    assert_eq!(object(&s, "stolen"), None, "not uploaded");
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "root:x:0:0:root:/root:/bin/bash\n",
        "untouched"
    );
    assert!(cache.path().join("journal/1-crafted.json").exists(), "left in place");
}

#[test]
fn a_record_of_another_endpoint_waits_for_a_mount_of_that_endpoint() {
    let _turn = common::alone();
    let (ours, other) = (server(), server());
    let cache = tempfile::tempdir().unwrap();
    let data = pattern(2 << 20, 11);
    kill_during_close(&ours, cache.path(), "f.bin", data.clone(), &[]);
    let m = Mount::with_cache(&other, cache.path(), &[]);
    let log = m.unmount();
    assert!(log.contains("belongs to") && log.contains(&ours.endpoint), "{log}");
    assert_eq!(
        object(&other, "f.bin"),
        None,
        "the same bucket name on another endpoint"
    );
    let m = Mount::with_cache(&ours, cache.path(), &[]);
    assert!(object(&ours, "f.bin").as_deref() == Some(&data[..]));
    drop(m);
}

#[test]
fn a_read_only_mount_does_not_recover() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let data = pattern(2 << 20, 12);
    kill_during_close(&s, cache.path(), "f.bin", data.clone(), &[]);
    let m = Mount::with_cache(&s, cache.path(), &["--read-only"]);
    let log = m.unmount();
    assert!(log.contains("read-only"), "{log}");
    assert_eq!(object(&s, "f.bin"), None);
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert!(object(&s, "f.bin").as_deref() == Some(&data[..]));
    drop(m);
}

/// `rm` returns before its DELETE lands (the background mode defers it): a daemon killed
/// in between leaves the delete journaled, and the next mount sends it, so the file does
/// not come back.
#[test]
fn a_delete_the_killed_daemon_had_not_sent_is_sent_by_the_next_mount() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let args = ["--cache-dir", cache.path().to_str().unwrap()];
    put(&s, "doomed", "x");
    put(&s, "kept", "y");
    let m = Mount::new(&s, &args);
    assert!(m.join("doomed").exists() && m.join("kept").exists());
    s.quirks().set_latency(Duration::from_secs(3));
    std::fs::remove_file(m.join("doomed")).unwrap();
    let log = m.kill();
    s.quirks().set_latency(Duration::ZERO);
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        object(&s, "doomed").is_some(),
        "precondition: the delete had not landed before the kill"
    );
    let m = Mount::new(&s, &args);
    assert_eq!(object(&s, "doomed"), None, "sent before the mount serves");
    assert!(!m.join("doomed").exists());
    assert_eq!(object(&s, "kept").as_deref(), Some(&b"y"[..]));
    let log = m.unmount();
    assert!(log.contains("recovered the delete of \"doomed\""), "{log}");
    assert_eq!(
        std::fs::read_dir(cache.path().join("journal"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "journal emptied"
    );
}
