//! Journaled write-back (issue 21): with the default options close() returns once the
//! file is journaled on local disk and the upload follows in the background. These tests
//! hold the mount to what that promises:
//!
//! - every file whose close() returned survives a SIGKILL of the daemon: the next mount
//!   with the same cache directory puts it in the bucket, byte for byte, before serving;
//! - closes keep returning while the server is unreachable, and `s3vol sync` (or the next
//!   mount, after a SIGKILL during the outage) uploads everything once it is back;
//! - a full staging disk fails writes cleanly (ENOSPC or EIO, in bounded time, the daemon
//!   alive) and loses nothing already closed;
//! - unlink, rename, rmdir and directory renames see pending uploads: no deleted file in
//!   the bucket, a renamed file only under its new name;
//! - fsync waits for the bucket and returns its error; a permanent refusal is listed in
//!   `s3vol status --json` (`upload_failures`), returned by the next close or fsync,
//!   kept across a remount, and dropped by `s3vol discard PATH`.
//!
//! Every test runs `alone()`: tests fork (`s3vol sync`, `fusermount3`), and a fork+exec
//! closes the descriptors the child inherited, which sends FLUSH for another test's open
//! files. Nothing here measures time: bounds only catch hangs. `WRITEBACK_TEST_EXTRA` (options
//! separated by spaces) is added to every mount, to run the tests against another mode
//! (e.g. `--upload-mode on-close`).

use crate::common;

mod races;

use common::{BUCKET, Mount, Ran, close, eventually, object, pattern, run_s3vol, server, stop_injecting};
use s3vol::server::{InjectedFailure, MemoryBackend, RequestFilter, RunningServer, ServerConfig, start_blocking};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a single file operation may take before the test calls it a hang. A
/// write waiting for staging space may wait out the daemon's own bound first.
const BOUND: Duration = Duration::from_secs(90);

/// The longest `s3vol sync` may take here (a few thousand small files on localhost).
const SYNC_BOUND: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Helpers

/// Mounts `s3://test` with `extra`, plus `WRITEBACK_TEST_EXTRA`.
fn mount(s: &RunningServer, extra: &[&str]) -> Mount {
    let env_extra = std::env::var("WRITEBACK_TEST_EXTRA").unwrap_or_default();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(env_extra.split_whitespace());
    Mount::new(s, &args)
}

/// Mounts with `--cache-dir cache` and `extra`.
fn mount_cache(s: &RunningServer, cache: &Path, extra: &[&str]) -> Mount {
    let mut args = vec!["--cache-dir", cache.to_str().expect("utf-8 path")];
    args.extend(extra);
    mount(s, &args)
}

/// Runs `f` in a thread and waits at most [`BOUND`] for it.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    common::within(what, BOUND, f)
}

/// create, write, close (the close's result included).
fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    close(f)
}

/// [`write_file`] within [`BOUND`].
fn write_bounded(path: PathBuf, data: Vec<u8>) -> io::Result<()> {
    within(&format!("writing {}", path.display()), move || write_file(&path, &data))
}

/// Opens `path` for writing (no change), fsyncs, closes: the fsync's result, then the
/// close's.
fn fsync_file(path: PathBuf) -> (io::Result<()>, io::Result<()>) {
    within(&format!("fsync of {}", path.display()), move || {
        let f = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) => return (Err(e), Ok(())),
        };
        let synced = f.sync_all();
        (synced, close(f))
    })
}

/// `s3vol sync MOUNTPOINT`.
fn sync(m: &Mount) -> Ran {
    run_s3vol(&["sync", m.path.to_str().expect("utf-8 path")], SYNC_BOUND)
}

#[track_caller]
fn sync_ok(m: &Mount, what: &str) {
    let ran = sync(m);
    assert_eq!(
        ran.code,
        Some(0),
        "{what}: `s3vol sync` failed:\n{}\n{}",
        ran.text(),
        m.log()
    );
}

fn uploads_pending(m: &Mount) -> u64 {
    m.status_count("uploads_pending")
}

/// `upload_failures` of `s3vol status --json`: (path, reason).
fn upload_failures(m: &Mount) -> Vec<(String, String)> {
    let st = m.status();
    let list = st
        .get("upload_failures")
        .and_then(serde_json::Value::as_array)
        .unwrap_or_else(|| panic!("status --json has no upload_failures list: {st}"));
    list.iter()
        .map(|f| {
            let field = |name: &str| {
                f.get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_else(|| panic!("upload_failures entry without {name:?}: {f}"))
                    .to_string()
            };
            (field("path"), field("reason"))
        })
        .collect()
}

/// Every PUT (PutObject, UploadPart, CopyObject, markers) answered 503 SlowDown until
/// [`stop_injecting`]: uploads stay pending, lookups and listings still work.
fn fail_every_put(s: &RunningServer) {
    s.quirks().inject_errors(
        u32::MAX,
        InjectedFailure::SlowDown,
        RequestFilter::Method(http::Method::PUT),
    );
}

/// Keys of the bucket under `prefix`.
fn keys_under(s: &RunningServer, prefix: &str) -> Vec<String> {
    s.backend()
        .keys(BUCKET)
        .into_iter()
        .filter(|k| k.starts_with(prefix))
        .collect()
}

#[track_caller]
fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ---------------------------------------------------------------------------------------
// The copier

/// Files per set of directories (see [`small_files`]).
const SET: usize = 200;

/// Files a few hundred bytes to a few KiB long, each different, in five subdirectories
/// of `tree/sN/`, a new N every [`SET`] files.
fn small_files(n: usize) -> Arc<Vec<(String, Vec<u8>)>> {
    Arc::new(
        (0..n)
            .map(|i| {
                let name = format!("tree/s{}/d{}/f{i:05}.bin", i / SET, i % 5);
                let mut body = format!("{name}\n").into_bytes();
                body.extend(pattern(200 + (i * 7919) % 4000, i as u32 + 1));
                (name, body)
            })
            .collect(),
    )
}

/// A copier thread writing `files[start..end]` into a mount, in order, one at a time; it
/// records a file (its index) only once its close() has returned success, and stops at
/// the first error.
///
/// It works through a descriptor of the mount's root (`/proc/self/fd/N/...`): once the
/// daemon is killed and the dead mount lazily detached, the mountpoint path is a plain
/// empty directory again, and a copier going by path would carry on writing there.
struct Copier {
    recorded: Arc<Mutex<Vec<usize>>>,
    closes: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Result<(), (usize, io::Error)>>>,
}

impl Copier {
    fn start(root: &Path, files: Arc<Vec<(String, Vec<u8>)>>, range: std::ops::Range<usize>) -> Copier {
        let root = File::open(root).expect("open the mount's root");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (recorded, closes) = (recorded.clone(), closes.clone());
            move || {
                let base = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()));
                for i in range {
                    let (name, body) = &files[i];
                    let path = base.join(name);
                    let parent = path.parent().expect("parent");
                    let done = fs::create_dir_all(parent).and_then(|()| write_file(&path, body));
                    match done {
                        Ok(()) => {
                            recorded.lock().unwrap().push(i);
                            closes.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => return Err((i, e)),
                    }
                }
                drop(root);
                Ok(())
            }
        });
        Copier {
            recorded,
            closes,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until `n` closes have returned; false if the copier stopped first.
    fn wait_for_closes(&self, n: usize) -> bool {
        let deadline = Instant::now() + BOUND;
        while self.closes.load(Ordering::SeqCst) < n {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "the copier made no progress to {n} closes within {BOUND:?} (at {})",
                self.closes.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Waits (bounded) for the copier to stop; what it recorded, and its error.
    fn finish(mut self) -> (Vec<usize>, Result<(), (usize, io::Error)>) {
        let thread = self.thread.take().expect("running");
        let deadline = Instant::now() + BOUND;
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the copier did not finish within {BOUND:?}: a write or close hangs (at {} closes)",
                self.closes.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let result = thread.join().expect("copier panicked");
        let recorded = self.recorded.lock().unwrap().clone();
        (recorded, result)
    }
}

/// The recorded files missing from the bucket or differing from what was written.
fn not_in_bucket(s: &RunningServer, files: &[(String, Vec<u8>)], recorded: &[usize]) -> Vec<String> {
    recorded
        .iter()
        .filter_map(|&i| {
            let (name, body) = &files[i];
            match object(s, name) {
                None => Some(format!("{name}: absent")),
                Some(got) if got != *body => {
                    Some(format!("{name}: {} bytes, not the {} written", got.len(), body.len()))
                }
                Some(_) => None,
            }
        })
        .collect()
}

/// Asserts every recorded file is in the bucket byte for byte; `when` says at which point.
#[track_caller]
fn assert_all_in_bucket(s: &RunningServer, files: &[(String, Vec<u8>)], recorded: &[usize], when: &str, log: &str) {
    let missing = not_in_bucket(s, files, recorded);
    assert!(
        missing.is_empty(),
        "{when}: {} of the {} files whose close() returned are not in the bucket byte for byte; first: {:?}\n--- log ---\n{log}",
        missing.len(),
        recorded.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Kills the daemon once the copier has `closes` closes (while it is still copying),
/// then waits for the copier to stop; returns what it recorded.
fn kill_at(m: Mount, copier: Copier, closes: usize) -> (Vec<usize>, String) {
    let reached = copier.wait_for_closes(closes);
    let log = m.kill();
    let (recorded, result) = copier.finish();
    assert!(
        reached,
        "the copier stopped before {closes} closes: {:?}\n{log}",
        result.err()
    );
    assert_no_panic(&log);
    (recorded, log)
}

// ---------------------------------------------------------------------------------------
// 1. SIGKILL during a copy of 2,000 small files, default options.

/// The daemon is killed three times during one copy (after about 100, 1,000 and 1,900
/// closes); each time a new mount with the same cache directory must have put every
/// recorded file in the bucket before it serves. The copy then resumes where it stopped.
/// (With `--upload-mode on-close` every close waits for a 100 ms round trip: minutes.)
#[test]
fn every_closed_file_survives_sigkill_of_the_daemon() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().expect("cache dir");
    let files = small_files(2000);
    let mut recorded_all: Vec<usize> = Vec::new();
    let mut next = 0;
    for kill_after in [100, 1000, 1900] {
        let m = mount_cache(&s, cache.path(), &[]);
        let copier = Copier::start(&m.path, files.clone(), next..files.len());
        // A WAN-like link once the copier writes into directories it made through this
        // mount (a new name there needs no lookup, so the copier does not wait for the
        // link): uploads lag behind the closes when the daemon is killed. None while the
        // next mount recovers.
        let fresh = next.div_ceil(SET) * SET;
        assert!(copier.wait_for_closes(fresh - next), "the copier stopped early");
        s.quirks().set_latency(Duration::from_millis(100));
        let (recorded, _log) = kill_at(m, copier, kill_after - next);
        s.quirks().set_latency(Duration::ZERO);
        recorded_all.extend(&recorded);
        next = recorded_all.len();
        // Not asserted (0 is right for a mode where close waits for the upload): how much
        // the next mount has to recover.
        eprintln!(
            "killed after {next} closes, {} of them not yet in the bucket",
            not_in_bucket(&s, &files, &recorded_all).len()
        );

        // The next mount recovers the journal before it serves.
        let m = mount_cache(&s, cache.path(), &[]);
        let missing = not_in_bucket(&s, &files, &recorded_all);
        if !missing.is_empty() {
            let ran = sync(&m);
            let after_sync = not_in_bucket(&s, &files, &recorded_all);
            panic!(
                "killed after {} closes: {} of them not in the bucket once the next mount served (first: {:?}); \
                 after `s3vol sync` (exit {:?}) still {} missing\n--- log of the next mount ---\n{}",
                recorded_all.len(),
                missing.len(),
                &missing[..missing.len().min(10)],
                ran.code,
                after_sync.len(),
                m.log()
            );
        }
        // And reads in the mount see them.
        for &i in recorded_all.iter().step_by(97) {
            let (name, body) = &files[i];
            assert!(
                fs::read(m.join(name)).ok().as_deref() == Some(&body[..]),
                "{name} reads back after the recovery"
            );
        }
        let log = m.unmount();
        assert_no_panic(&log);
    }

    // The rest of the copy, then a clean unmount.
    let m = mount_cache(&s, cache.path(), &[]);
    let copier = Copier::start(&m.path, files.clone(), next..files.len());
    let (recorded, result) = copier.finish();
    result.unwrap_or_else(|(i, e)| panic!("copying {}: {e}\n{}", files[i].0, m.log()));
    recorded_all.extend(recorded);
    assert_eq!(recorded_all, (0..files.len()).collect::<Vec<_>>());
    let log = m.unmount();
    assert_no_panic(&log);
    assert_all_in_bucket(&s, &files, &recorded_all, "after the last unmount", &log);
    let journal = cache.path().join("journal");
    let left = fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the journal is empty once everything is uploaded");
}

// ---------------------------------------------------------------------------------------
// 2. The server unreachable for a while.

/// A server taken down (connections refused), with its data kept for its return.
struct Down {
    addr: SocketAddr,
    data: Arc<MemoryBackend>,
}

fn take_down(s: RunningServer) -> Down {
    let down = Down {
        addr: s.addr,
        data: s.backend().clone(),
    };
    drop(s);
    down
}

/// The server back on the same address with the same objects (as the old one ended).
fn bring_back(down: Down) -> RunningServer {
    // Let requests the old server was still answering end before its data is copied.
    std::thread::sleep(Duration::from_millis(300));
    let s = start_blocking(ServerConfig {
        addr: down.addr,
        min_part_size: 0,
        ..ServerConfig::default()
    });
    s.backend().create_bucket(BUCKET);
    for key in down.data.keys(BUCKET) {
        if let Some(o) = down.data.get_object(BUCKET, &key) {
            let metadata: Vec<(&str, &str)> = o.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            s.backend()
                .put_object(BUCKET, &key, o.body.to_vec(), &metadata)
                .expect("bucket exists");
        }
    }
    s
}

/// Creates the copier's directories and lists them, so that with `--metadata-ttl inf` a
/// new name in them is known to be new without asking the server.
fn prepare_dirs(m: &Mount, files: &[(String, Vec<u8>)]) {
    let dirs: std::collections::BTreeSet<PathBuf> = files
        .iter()
        .map(|(name, _)| m.join(name).parent().expect("parent").to_path_buf())
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        let _ = fs::read_dir(d).map(|r| r.count());
    }
}

/// Every PUT fails (503) for a while in the middle of a copy, with the default options:
/// closes keep returning, and `s3vol sync` uploads everything once PUTs work again.
#[test]
fn closes_keep_returning_while_every_upload_fails() {
    let _turn = common::alone();
    let s = server();
    let files = small_files(600);
    let m = mount(&s, &[]);
    prepare_dirs(&m, &files);
    let copier = Copier::start(&m.path, files.clone(), 0..files.len());
    assert!(copier.wait_for_closes(150), "the copier stopped early:\n{}", m.log());
    fail_every_put(&s);
    let (recorded, result) = copier.finish();
    result.unwrap_or_else(|(i, e)| panic!("copying {} while PUTs fail: {e}\n{}", files[i].0, m.log()));
    assert_eq!(recorded.len(), files.len());
    let pending = uploads_pending(&m);
    assert!(pending > 0, "uploads are pending while every PUT fails:\n{}", m.log());
    let missing = not_in_bucket(&s, &files, &recorded).len() as u64;
    assert!(
        missing > 0,
        "files closed while PUTs failed cannot be in the bucket yet"
    );
    // Every file not in the bucket has its journal record (a crash now would send it).
    let records = m.status_count("journal_records");
    assert!(
        records >= missing,
        "{records} journal records for {missing} files not in the bucket"
    );
    stop_injecting(&s);
    sync_ok(&m, "once PUTs work again");
    assert_all_in_bucket(&s, &files, &recorded, "after `s3vol sync`", &m.log());
    assert_eq!(uploads_pending(&m), 0, "nothing pending after sync");
    assert_eq!(m.status_count("journal_records"), 0, "every record done after sync");
    let log = m.unmount();
    assert_no_panic(&log);
}

/// The server goes away (connections refused) in the middle of a copy: closes keep
/// returning; once it is back, `s3vol sync` succeeds and every file is in the bucket.
/// (`--metadata-ttl inf`: a new name in a listed directory needs no lookup, which the
/// absent server could not answer.)
#[test]
fn closes_keep_returning_while_the_server_is_down() {
    let _turn = common::alone();
    let s = server();
    let files = small_files(800);
    let m = mount(&s, &["--metadata-ttl", "inf"]);
    prepare_dirs(&m, &files);
    let copier = Copier::start(&m.path, files.clone(), 0..files.len());
    assert!(copier.wait_for_closes(200), "the copier stopped early:\n{}", m.log());
    let down = take_down(s);
    let (recorded, result) = copier.finish();
    result.unwrap_or_else(|(i, e)| panic!("copying {} while the server is down: {e}\n{}", files[i].0, m.log()));
    assert_eq!(recorded.len(), files.len());
    // A while without a server: uploads fail and back off.
    std::thread::sleep(Duration::from_secs(3));
    let s = bring_back(down);
    sync_ok(&m, "once the server is back");
    assert_all_in_bucket(&s, &files, &recorded, "after `s3vol sync`", &m.log());
    let log = m.unmount();
    assert_no_panic(&log);
}

/// The daemon is killed while the server is down; the next mount with the same cache
/// directory, once the server is back, puts every recorded file in the bucket.
#[test]
fn a_daemon_killed_while_the_server_is_down_uploads_everything_at_the_next_mount() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().expect("cache dir");
    let files = small_files(600);
    let m = mount_cache(&s, cache.path(), &["--metadata-ttl", "inf"]);
    prepare_dirs(&m, &files);
    let copier = Copier::start(&m.path, files.clone(), 0..files.len());
    assert!(copier.wait_for_closes(150), "the copier stopped early:\n{}", m.log());
    let down = take_down(s);
    let (recorded, log) = kill_at(m, copier, 450);
    let s = bring_back(down);
    eprintln!(
        "killed after {} closes, {} of them not yet in the bucket",
        recorded.len(),
        not_in_bucket(&s, &files, &recorded).len()
    );
    let m = mount_cache(&s, cache.path(), &[]);
    let missing = not_in_bucket(&s, &files, &recorded);
    assert!(
        missing.is_empty(),
        "{} of the {} recorded files not in the bucket once the next mount served; first: {:?}\n\
         --- log of the killed mount ---\n{log}\n--- log of the next mount ---\n{}",
        missing.len(),
        recorded.len(),
        &missing[..missing.len().min(10)],
        m.log()
    );
    sync_ok(&m, "after the recovery");
    let log = m.unmount();
    assert_no_panic(&log);
}

// ---------------------------------------------------------------------------------------
// 5. fsync and refusals.

/// fsync(2) returns once the file is in the bucket, and returns the upload's error.
#[test]
fn fsync_waits_for_the_bucket_and_returns_the_uploads_error() {
    let _turn = common::alone();
    let s = server();
    let m = mount(&s, &[]);

    let data = pattern(50_000, 1);
    let d = data.clone();
    let path = m.join("synced");
    within("write and fsync", move || -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(&d)?;
        f.sync_all()?;
        close(f)
    })
    .expect("write, fsync, close");
    assert!(object(&s, "synced") == Some(data), "in the bucket when fsync returned");

    // Transient failures beyond the retry budget: fsync reports them.
    fail_every_put(&s);
    let data = pattern(40_000, 2);
    write_bounded(m.join("later"), data.clone()).expect("close journals while PUTs fail");
    let (synced, closed) = fsync_file(m.join("later"));
    let e = synced.expect_err("fsync while every PUT fails");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "fsync's error: {e}");
    let _ = closed;
    assert!(
        fs::read(m.join("later")).ok() == Some(data.clone()),
        "the data stays readable in the mount"
    );
    stop_injecting(&s);
    let (synced, closed) = fsync_file(m.join("later"));
    synced.expect("fsync once PUTs work");
    closed.expect("close after fsync");
    assert!(object(&s, "later") == Some(data), "uploaded by the fsync");
    let log = m.unmount();
    assert_no_panic(&log);
}

/// A permanent refusal (400 EntityTooLarge from a server that takes at most 64 KiB in one
/// PutObject): close returns (write-back), then the refusal is listed in `s3vol status
/// --json` with path and reason, logged once, returned by the next close and by fsync,
/// makes `s3vol sync` exit 1 naming the file, stays in staging across a remount, and
/// `s3vol discard PATH` drops it.
#[test]
fn a_permanent_refusal_is_listed_returned_kept_and_discarded() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().expect("cache dir");
    s.quirks().set_max_put_size(Some(64 << 10));
    let m = mount_cache(&s, cache.path(), &[]);
    fs::create_dir(m.join("dir")).expect("mkdir");
    let big = pattern(200_000, 3);
    write_bounded(m.join("dir/big"), big.clone()).expect("close returns once journaled");
    write_bounded(m.join("dir/small"), b"fits".to_vec()).expect("a small file");

    let listed = eventually(Duration::from_secs(30), || !upload_failures(&m).is_empty());
    let failures = upload_failures(&m);
    assert!(listed, "no upload_failures in status --json:\n{}", m.log());
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "dir/big", "the path in the mount: {failures:?}");
    assert!(!failures[0].1.is_empty(), "a reason: {failures:?}");
    // Not retried in a loop: logged once.
    std::thread::sleep(Duration::from_secs(3));
    let log = m.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("dir/big") && l.contains("refused"))
        .count();
    assert_eq!(lines, 1, "the refusal is logged once:\n{log}");

    // The next close of the file returns it.
    let closed = within("open and close dir/big", {
        let path = m.join("dir/big");
        move || OpenOptions::new().write(true).open(path).and_then(close)
    });
    assert!(closed.is_err(), "the next close returns the refusal\n{}", m.log());
    // fsync too.
    let (synced, _) = fsync_file(m.join("dir/big"));
    assert!(synced.is_err(), "fsync returns the refusal");
    assert!(
        fs::read(m.join("dir/big")).ok() == Some(big.clone()),
        "the data is kept in the mount"
    );
    // sync names it and fails.
    let ran = sync(&m);
    assert_eq!(ran.code, Some(1), "s3vol sync with a refused file:\n{}", ran.text());
    assert!(
        ran.stderr.contains("dir/big"),
        "s3vol sync names the refused file:\n{}",
        ran.text()
    );
    assert_eq!(
        object(&s, "dir/small").as_deref(),
        Some(&b"fits"[..]),
        "the other file is uploaded"
    );
    assert_eq!(object(&s, "dir/big"), None);
    let log = m.unmount();
    assert_no_panic(&log);

    // Kept across a remount: the refusal comes back, with the data.
    let m = mount_cache(&s, cache.path(), &[]);
    let listed = eventually(Duration::from_secs(30), || {
        upload_failures(&m).iter().any(|(p, _)| p == "dir/big")
    });
    assert!(
        listed,
        "after a remount the refusal is listed again: {:?}\n{}",
        upload_failures(&m),
        m.log()
    );
    // Checked after the discard below, so that one run tells about both.
    let read_back = match fs::read(m.join("dir/big")) {
        Ok(got) if got == big => None,
        Ok(got) => Some(format!("{} bytes, not the {} written", got.len(), big.len())),
        Err(e) => Some(e.to_string()),
    };

    // Dropped by `s3vol discard`.
    let path = m.join("dir/big");
    let ran = run_s3vol(&["discard", path.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(
        ran.code,
        Some(0),
        "s3vol discard after a remount (the kept data read back: {read_back:?}):\n{}\n{}",
        ran.text(),
        m.log()
    );
    assert!(upload_failures(&m).is_empty(), "nothing listed after discard");
    assert!(
        !m.join("dir/big").exists(),
        "a discarded file that never reached the bucket is gone from the mount"
    );
    sync_ok(&m, "after discard");
    assert_eq!(object(&s, "dir/big"), None);
    let log = m.unmount();
    assert_no_panic(&log);
    let m = mount_cache(&s, cache.path(), &[]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        upload_failures(&m).is_empty(),
        "a discarded refusal stays gone after a remount"
    );
    assert_eq!(object(&s, "dir/big"), None);
    let journal = cache.path().join("journal");
    let left = fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "nothing left in the journal");
    drop(m);
    assert!(
        read_back.is_none(),
        "after a remount the refused file reads back with its kept data: {}",
        read_back.unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------------
// 6. The two modes.

/// The default mode returns from close() while no PUT can succeed (the file is
/// journaled); `--upload-mode on-close` and its older spelling `--upload-on-close true`
/// wait and return the upload's error; `--upload-on-close false` is the default mode.
#[test]
fn upload_modes_and_the_deprecated_alias() {
    let _turn = common::alone();
    let s = server();
    for (options, waits) in [
        (&[][..], false),
        (&["--upload-mode", "background"][..], false),
        (&["--staging-min-free", "5%"][..], false),
        (&["--staging-min-free", "64MiB"][..], false),
        (&["--upload-mode", "on-close"][..], true),
        (&["--upload-on-close", "true"][..], true),
        (&["--upload-on-close", "false"][..], false),
    ] {
        let m = Mount::new(&s, options);
        fail_every_put(&s);
        let closed = write_bounded(m.join("f"), b"one".to_vec());
        if waits {
            let e = closed.expect_err(&format!("{options:?}: close waits for the failing upload"));
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{options:?}: {e}");
        } else {
            closed.unwrap_or_else(|e| panic!("{options:?}: close returns once journaled: {e}\n{}", m.log()));
        }
        stop_injecting(&s);
        if waits {
            write_bounded(m.join("g"), b"two".to_vec()).expect("close once PUTs work");
            assert_eq!(
                object(&s, "g").as_deref(),
                Some(&b"two"[..]),
                "{options:?}: in the bucket when close returned"
            );
        } else {
            sync_ok(&m, &format!("{options:?}"));
            assert_eq!(object(&s, "f").as_deref(), Some(&b"one"[..]), "{options:?}");
        }
        let log = m.unmount();
        assert_no_panic(&log);
        for k in s.backend().keys(BUCKET) {
            s.backend().delete_object(BUCKET, &k);
        }
    }
}
