//! Write-back against a full staging disk, and unlink, rename, rmdir and directory renames
//! racing pending uploads (see the parent module).

use super::{
    assert_no_panic, bring_back, fail_every_put, keys_under, mount, mount_cache, sync_ok, take_down, uploads_pending,
    within, write_bounded, write_file,
};
use crate::common::{self, is_mounted, object, pattern, server, stop_injecting};
use s3vol::server::RunningServer;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// 3. A full staging disk.

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount -t tmpfs (the tests run as root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if is_mounted(self.dir.path()) {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
        if is_mounted(self.dir.path()) {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// The cache directory on a 32 MiB tmpfs, uploads failing (every PUT 503), and more
/// written than fits: a write or close fails with ENOSPC (or EIO) in bounded time, the
/// daemon lives on, and once uploads work again every file whose close returned success
/// is in the bucket byte for byte; writing works again.
#[test]
fn a_full_staging_disk_fails_writes_cleanly_and_loses_nothing_closed() {
    let _turn = common::alone();
    let s = server();
    let tmpfs = Tmpfs::new("32m");
    let cache = tmpfs.path().join("cache");
    let m = mount_cache(&s, &cache, &["--staging-min-free", "4MiB", "--cache-size", "0"]);
    fs::create_dir(m.join("full")).expect("mkdir");
    fail_every_put(&s);

    let body = |i: usize| {
        let mut b = format!("full/f{i:03}\n").into_bytes();
        b.extend(pattern(1 << 20, 1000 + i as u32));
        b
    };
    let mut closed = Vec::new();
    let mut failure = None;
    for i in 0..64 {
        match write_bounded(m.join(&format!("full/f{i:03}")), body(i)) {
            Ok(()) => closed.push(i),
            Err(e) => {
                failure = Some((i, e));
                break;
            }
        }
    }
    let (failed_at, e) = failure.unwrap_or_else(|| {
        panic!(
            "64 MiB written and closed on a 32 MiB cache disk while no upload can succeed\n{}",
            m.log()
        )
    });
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EIO)),
        "full/f{failed_at:03}: a full staging disk fails with ENOSPC or EIO, not {e:?}"
    );
    assert!(!closed.is_empty(), "some files fit before the disk was full: {e}");
    eprintln!(
        "{} files of 1 MiB closed, then full/f{failed_at:03} failed: {e}",
        closed.len()
    );
    // The daemon is alive and serves what was closed from its staging files.
    assert!(is_mounted(&m.path), "still mounted");
    for &i in closed.iter().step_by(5) {
        let path = m.join(&format!("full/f{i:03}"));
        let got = within("a read while staging is full", move || fs::read(path));
        assert!(
            got.ok() == Some(body(i)),
            "full/f{i:03} reads back while staging is full"
        );
    }

    stop_injecting(&s);
    sync_ok(&m, "once uploads work again");
    for &i in &closed {
        assert!(
            object(&s, &format!("full/f{i:03}")) == Some(body(i)),
            "full/f{i:03}, closed successfully before the disk filled up, is in the bucket\n{}",
            m.log()
        );
    }
    // Staging drained: writing works again.
    let after = pattern(1 << 20, 7);
    write_bounded(m.join("full/after"), after.clone()).expect("a write once staging has drained");
    sync_ok(&m, "after the disk drained");
    assert!(object(&s, "full/after") == Some(after));
    let log = m.unmount();
    assert_no_panic(&log);
    drop(tmpfs);
}

// ---------------------------------------------------------------------------------------
// 4. Unlink and rename racing pending uploads.

/// Files unlinked right after their close, while their uploads are pending, never land
/// in the bucket: neither while PUTs fail (then work again) nor in a race with uploads
/// running at full speed.
#[test]
fn an_unlinked_pending_file_never_reaches_the_bucket() {
    let _turn = common::alone();
    let s = server();
    let m = mount(&s, &[]);
    fs::create_dir_all(m.join("gone")).expect("mkdir");
    fs::create_dir_all(m.join("race")).expect("mkdir");

    // Uploads held back.
    fail_every_put(&s);
    for i in 0..20 {
        let path = m.join(&format!("gone/f{i}"));
        write_bounded(path.clone(), pattern(3000, i)).expect("write and close while PUTs fail");
        fs::remove_file(&path).expect("unlink a file whose upload is pending");
    }
    write_bounded(m.join("kept"), b"kept".to_vec()).expect("write kept");
    stop_injecting(&s);
    sync_ok(&m, "after the unlinks");
    assert_eq!(object(&s, "kept").as_deref(), Some(&b"kept"[..]));
    let gone: Vec<String> = keys_under(&s, "gone/").into_iter().filter(|k| k != "gone/").collect();
    assert!(gone.is_empty(), "unlinked while pending, yet in the bucket: {gone:?}");

    // Racing uploads in flight.
    for i in 0..300 {
        let path = m.join(&format!("race/f{i}"));
        write_file(&path, &pattern(500 + i, 100 + i as u32)).expect("write and close");
        fs::remove_file(&path).expect("unlink right after close");
    }
    // And with uploads in flight on a slow link when the unlink comes.
    s.quirks().set_latency(Duration::from_millis(50));
    for i in 300..360 {
        let path = m.join(&format!("race/f{i}"));
        write_file(&path, &pattern(500 + i, 100 + i as u32)).expect("write and close");
        std::thread::sleep(Duration::from_millis(i as u64 % 3 * 20));
        fs::remove_file(&path).expect("unlink right after close");
    }
    s.quirks().set_latency(Duration::ZERO);
    sync_ok(&m, "after the racing unlinks");
    let raced =
        |s: &RunningServer| -> Vec<String> { keys_under(s, "race/").into_iter().filter(|k| k != "race/").collect() };
    assert!(
        raced(&s).is_empty(),
        "unlinked, yet in the bucket after sync: {:?}",
        raced(&s)
    );
    // Nothing reappears later (a late upload after the delete).
    std::thread::sleep(Duration::from_secs(2));
    assert!(raced(&s).is_empty(), "reappeared after sync: {:?}", raced(&s));
    let log = m.unmount();
    assert!(raced(&s).is_empty(), "reappeared at unmount: {:?}", raced(&s));
    assert_no_panic(&log);
}

/// Unlinks done while the server is down, then a SIGKILL: the next mount with the same
/// cache directory neither resurrects a deleted file nor uploads one created and deleted
/// meanwhile; what was uploaded before and deleted is deleted from the bucket.
#[test]
fn unlinks_before_a_sigkill_are_not_undone_by_the_next_mount() {
    let _turn = common::alone();
    let s = server();
    let cache = tempfile::tempdir().expect("cache dir");
    let m = mount_cache(&s, cache.path(), &["--metadata-ttl", "inf"]);
    fs::create_dir(m.join("u")).expect("mkdir");
    for i in 0..20u32 {
        write_file(&m.join(&format!("u/old{i}")), &pattern(800, 2000 + i)).expect("write");
    }
    write_file(&m.join("u/stays"), b"stays").expect("write");
    sync_ok(&m, "before the outage");
    assert_eq!(keys_under(&s, "u/old").len(), 20);
    let _ = fs::read_dir(m.join("u")).map(|d| d.count());

    let down = take_down(s);
    for i in 0..20u32 {
        fs::remove_file(m.join(&format!("u/old{i}"))).expect("unlink while the server is down");
    }
    for i in 0..20u32 {
        let path = m.join(&format!("u/new{i}"));
        write_file(&path, &pattern(900, 3000 + i)).expect("write and close while the server is down");
        fs::remove_file(&path).expect("unlink while the server is down");
    }
    write_file(&m.join("u/late"), b"late").expect("write and close while the server is down");
    let log = m.kill();
    assert_no_panic(&log);
    let s = bring_back(down);
    let m = mount_cache(&s, cache.path(), &[]);
    sync_ok(&m, "after the recovery");
    assert_eq!(object(&s, "u/stays").as_deref(), Some(&b"stays"[..]));
    assert_eq!(
        object(&s, "u/late").as_deref(),
        Some(&b"late"[..]),
        "closed before the kill\n{}",
        m.log()
    );
    let resurrected = keys_under(&s, "u/old");
    assert!(
        resurrected.is_empty(),
        "deleted before the kill, still in the bucket after the next mount: {resurrected:?}\n{}",
        m.log()
    );
    let appeared = keys_under(&s, "u/new");
    assert!(
        appeared.is_empty(),
        "created and deleted before the kill, uploaded by the next mount: {appeared:?}\n{}",
        m.log()
    );
    let log = m.unmount();
    assert_no_panic(&log);
}

/// Rewrites of a pending file upload in order: the bucket ends with the last version.
#[test]
fn the_last_close_wins() {
    let _turn = common::alone();
    let s = server();
    let m = mount(&s, &[]);
    fs::create_dir(m.join("v")).expect("mkdir");
    for round in 0..3u32 {
        for i in 0..100u32 {
            write_file(
                &m.join(&format!("v/f{i}")),
                &pattern(300 + i as usize, round * 1000 + i),
            )
            .expect("write");
        }
    }
    sync_ok(&m, "after the rewrites");
    for i in 0..100u32 {
        let key = format!("v/f{i}");
        let got = object(&s, &key);
        // On a failure, which round the bucket holds and what the daemon logged of the key.
        let round = (0..3u32).find(|r| got == Some(pattern(300 + i as usize, r * 1000 + i)));
        assert!(
            round == Some(2),
            "{key} holds round {round:?}, not its last version:\n{}",
            m.log()
                .lines()
                .filter(|l| l.contains(&format!("\"{key}\"")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let log = m.unmount();
    assert_no_panic(&log);
}

/// `a` written and closed while PUTs fail, then renamed to `b`: after sync `b` holds the
/// bytes, `a` is absent, and `a`'s bytes never went to key `a` (no upload-then-copy).
/// Then the same racing uploads at full speed.
#[test]
fn a_renamed_pending_file_lands_under_its_new_name_only() {
    let _turn = common::alone();
    let s = server();
    let m = mount(&s, &[]);
    fs::create_dir(m.join("r")).expect("mkdir");
    fs::create_dir(m.join("q")).expect("mkdir");

    fail_every_put(&s);
    for i in 0..10u32 {
        write_bounded(m.join(&format!("r/a{i}")), pattern(2000, 300 + i)).expect("write and close while PUTs fail");
        fs::rename(m.join(&format!("r/a{i}")), m.join(&format!("r/b{i}"))).expect("rename a pending file");
    }
    s.stats().reset();
    stop_injecting(&s);
    sync_ok(&m, "after the renames");
    for i in 0..10u32 {
        assert!(
            object(&s, &format!("r/b{i}")) == Some(pattern(2000, 300 + i)),
            "r/b{i} has the bytes written as r/a{i}"
        );
        assert_eq!(object(&s, &format!("r/a{i}")), None, "r/a{i} is absent");
        assert!(
            fs::read(m.join(&format!("r/b{i}"))).ok() == Some(pattern(2000, 300 + i)),
            "r/b{i} reads back"
        );
    }
    let stats = s.stats().snapshot();
    assert_eq!(
        s.stats().count("CopyObject"),
        0,
        "a pending new file is renamed without upload + copy: {stats:?}"
    );
    let log = m.log();
    assert!(
        log.contains("PutObject \"r/b0\": ok"),
        "the request log names each PUT (needed for the next check):\n{log}"
    );
    for i in 0..10 {
        assert!(
            !log.contains(&format!("PutObject \"r/a{i}\": ok")),
            "r/a{i}'s bytes were PUT under the old name:\n{log}"
        );
    }

    // Racing uploads in flight.
    for i in 0..200u32 {
        write_file(&m.join(&format!("q/a{i}")), &pattern(700, 500 + i)).expect("write and close");
        fs::rename(m.join(&format!("q/a{i}")), m.join(&format!("q/b{i}"))).expect("rename right after close");
    }
    // And with uploads in flight on a slow link when the rename comes.
    s.quirks().set_latency(Duration::from_millis(50));
    for i in 200..260u32 {
        write_file(&m.join(&format!("q/a{i}")), &pattern(700, 500 + i)).expect("write and close");
        std::thread::sleep(Duration::from_millis(u64::from(i % 3) * 20));
        fs::rename(m.join(&format!("q/a{i}")), m.join(&format!("q/b{i}"))).expect("rename right after close");
    }
    s.quirks().set_latency(Duration::ZERO);
    sync_ok(&m, "after the racing renames");
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..260u32 {
        assert!(
            object(&s, &format!("q/b{i}")) == Some(pattern(700, 500 + i)),
            "q/b{i} has the bytes written as q/a{i}"
        );
        assert_eq!(object(&s, &format!("q/a{i}")), None, "q/a{i} is absent");
    }
    let log = m.unmount();
    assert_no_panic(&log);
}

/// rmdir of a directory whose only file is still pending is ENOTEMPTY, as on a local
/// disk; after the file is unlinked it succeeds and nothing of it reaches the bucket. A
/// directory renamed while its files' uploads are pending lands under the new prefix.
#[test]
fn rmdir_and_directory_rename_see_pending_files() {
    let _turn = common::alone();
    let s = server();
    let m = mount(&s, &[]);
    fs::create_dir(m.join("p")).expect("mkdir p");
    fs::create_dir(m.join("p2")).expect("mkdir p2");
    fail_every_put(&s);
    write_bounded(m.join("p/x"), b"pending".to_vec()).expect("write p/x while PUTs fail");
    write_bounded(m.join("p2/y"), b"pending too".to_vec()).expect("write p2/y while PUTs fail");
    let e = fs::remove_dir(m.join("p")).expect_err("rmdir of a directory holding a pending file");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "rmdir p: {e}");
    fs::remove_file(m.join("p2/y")).expect("unlink p2/y");
    fs::remove_dir(m.join("p2")).expect("rmdir p2 once its pending file is unlinked");
    stop_injecting(&s);
    sync_ok(&m, "after rmdir");
    assert_eq!(object(&s, "p/x").as_deref(), Some(&b"pending"[..]));
    assert!(keys_under(&s, "p2/").is_empty(), "{:?}", keys_under(&s, "p2/"));
    assert!(!m.join("p2").exists(), "p2 is gone");

    // A directory renamed with uploads of its files pending.
    fs::create_dir_all(m.join("d/sub")).expect("mkdir d/sub");
    let name = |i: u32| {
        if i.is_multiple_of(4) {
            format!("sub/g{i}")
        } else {
            format!("f{i}")
        }
    };
    // A slow link, so that the uploads are still under way when the rename comes.
    s.quirks().set_latency(Duration::from_millis(50));
    for i in 0..120u32 {
        write_file(&m.join("d").join(name(i)), &pattern(1500, 900 + i)).expect("write into d");
    }
    let pending = uploads_pending(&m);
    let renamed = within("mv d e", {
        let (from, to) = (m.join("d"), m.join("e"));
        move || fs::rename(from, to)
    });
    s.quirks().set_latency(Duration::ZERO);
    renamed.unwrap_or_else(|e| panic!("mv d e with {pending} uploads pending: {e}\n{}", m.log()));
    eprintln!("mv d e with {pending} uploads pending");
    sync_ok(&m, "after mv d e");
    for i in 0..120u32 {
        assert!(
            object(&s, &format!("e/{}", name(i))) == Some(pattern(1500, 900 + i)),
            "e/{} holds its bytes after the directory rename ({pending} uploads were pending)",
            name(i)
        );
    }
    assert!(
        keys_under(&s, "d/").is_empty(),
        "left under d/: {:?}",
        keys_under(&s, "d/")
    );
    let log = m.unmount();
    assert_no_panic(&log);
}

/// A directory of new files renamed while no upload can succeed: as on a local disk the
/// rename succeeds, and once PUTs work the files land under the new prefix only.
#[test]
fn a_directory_of_pending_files_renamed_while_uploads_fail() {
    let _turn = common::alone();
    let s = server();
    let m = mount(&s, &[]);
    fs::create_dir(m.join("src")).expect("mkdir");
    fail_every_put(&s);
    for i in 0..20u32 {
        write_bounded(m.join(&format!("src/f{i}")), pattern(1000, 1200 + i)).expect("write while PUTs fail");
    }
    within("mv src dst while PUTs fail", {
        let (from, to) = (m.join("src"), m.join("dst"));
        move || fs::rename(from, to)
    })
    .unwrap_or_else(|e| panic!("mv src dst while uploads of its files are pending: {e}\n{}", m.log()));
    stop_injecting(&s);
    sync_ok(&m, "after mv src dst");
    for i in 0..20u32 {
        assert!(
            object(&s, &format!("dst/f{i}")) == Some(pattern(1000, 1200 + i)),
            "dst/f{i} holds its bytes"
        );
    }
    assert!(
        keys_under(&s, "src/").is_empty(),
        "left under src/: {:?}",
        keys_under(&s, "src/")
    );
    let log = m.unmount();
    assert_no_panic(&log);
}
