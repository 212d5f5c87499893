//! Crash safety: dirty data journaled under --cache-dir survives a SIGKILL of the daemon
//! and is uploaded by the next mount with the same cache directory.

mod common;

use common::{BUCKET, Mount, object, pattern, put, server};
use std::io::Write;
use std::time::Duration;

/// The tests run one at a time: another test's fork+exec closes inherited descriptors,
/// and that close sends FLUSH, which would upload before the kill.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes `data` to `name` in a thread whose close() blocks on a slow server, kills the
/// daemon while the upload is in flight, and returns the cache directory.
fn kill_during_close(
    s: &s3vol::server::RunningServer,
    cache: &std::path::Path,
    name: &str,
    data: Vec<u8>,
    extra: &[&str],
) {
    let mut args = vec!["--cache-dir", cache.to_str().unwrap()];
    args.extend(extra);
    let m = Mount::new(s, &args);
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let data = pattern(3 << 20, 21);
    kill_during_close(&s, cache.path(), "survivor.bin", data.clone(), &[]);
    assert_eq!(
        object(&s, "survivor.bin"),
        None,
        "the upload did not finish before the kill"
    );
    let m = Mount::new(&s, &["--cache-dir", cache.path().to_str().unwrap()]);
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    put(&s, "shared.txt", "original");
    let cache = tempfile::tempdir().unwrap();
    kill_during_close(&s, cache.path(), "shared.txt", b"mine, written locally".to_vec(), &[]);
    put(&s, "shared.txt", "theirs, written by another pod");
    let m = Mount::new(&s, &["--cache-dir", cache.path().to_str().unwrap()]);
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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let data = pattern(12 << 20, 5);
    kill_during_close(&s, cache.path(), "big.bin", data.clone(), &["--part-size", "5MiB"]);
    assert!(
        !s.backend().pending_uploads(BUCKET).is_empty(),
        "a multipart upload was in flight"
    );
    let m = Mount::new(
        &s,
        &["--cache-dir", cache.path().to_str().unwrap(), "--part-size", "5MiB"],
    );
    assert!(
        s.backend().pending_uploads(BUCKET).is_empty(),
        "stale uploads are aborted"
    );
    assert!(object(&s, "big.bin").as_deref() == Some(&data[..]));
    drop(m);
}
