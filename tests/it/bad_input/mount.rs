//! Bad input through a mount: names too long or with NUL, keys the mount cannot show,
//! forbidden names, a full volume, expired credentials, a refused O_TRUNC and hostile
//! object metadata (see the parent module).

use crate::common::{self, BUCKET, Mount, object, pattern, put, server, walk, write_credentials_file};
use s3vol::server::{KeyPair, ServerConfig, start_blocking};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("must fail").raw_os_error().expect("an OS error")
}

#[test]
fn names_over_255_bytes_are_enametoolong_and_change_nothing() {
    let _turn = common::shared();
    let s = server();
    put(&s, "keep", "k");
    // A key whose name cannot be a file name (and one that can, exactly 255 bytes).
    put(&s, &format!("d/{}", "l".repeat(256)), "hidden");
    put(&s, &format!("d/{}", "m".repeat(255)), "shown");
    let m = Mount::new(&s, &[]);
    let long = "x".repeat(256);
    assert_eq!(errno(fs::create_dir(m.join(&long))), libc::ENAMETOOLONG, "mkdir");
    assert_eq!(errno(fs::metadata(m.join(&long))), libc::ENAMETOOLONG, "stat");
    assert_eq!(
        errno(fs::rename(m.join("keep"), m.join(&long))),
        libc::ENAMETOOLONG,
        "rename"
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("keep", m.join(&long))),
        libc::ENAMETOOLONG,
        "symlink"
    );
    let max = "y".repeat(255);
    fs::write(m.join(&max), "255 bytes").expect("a 255-byte name works");
    let listed: Vec<String> = fs::read_dir(m.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["m".repeat(255)],
        "the 256-byte key is skipped, the rest listed"
    );
    let log = m.unmount();
    assert_eq!(
        object(&s, "keep").as_deref(),
        Some(&b"k"[..]),
        "the rename source is intact"
    );
    assert_eq!(object(&s, &max).as_deref(), Some(&b"255 bytes"[..]));
    let keys = s.backend().keys(BUCKET);
    assert_eq!(keys.len(), 4, "nothing else was created: {keys:?}");
    assert!(
        log.contains("longer than 255 bytes"),
        "the skipped key is logged:\n{log}"
    );
}

/// A path cannot carry NUL through the system call interface: the C string ends there.
/// Rust refuses such a path before any call, so nothing reaches the mount.
#[test]
fn a_path_with_nul_is_refused_and_creates_nothing() {
    let _turn = common::shared();
    let s = server();
    put(&s, "ok", "ok");
    let m = Mount::new(&s, &[]);
    for path in [m.join("a\0b"), m.join("dir\0/file")] {
        let err = fs::write(&path, "x").expect_err("NUL in a path");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
    assert_eq!(
        fs::create_dir(m.join("d\0")).expect_err("NUL").kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        fs::rename(m.join("ok"), m.join("o\0k")).expect_err("NUL").kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(walk(&m.path).into_iter().collect::<Vec<_>>(), ["ok"]);
    m.unmount();
    assert_eq!(s.backend().keys(BUCKET), ["ok"], "nothing created, nothing lost");
}

/// Another client's key with a NUL byte cannot be a file name: README promises it is
/// skipped with a warning and never breaks a listing. XML 1.0 cannot carry NUL, so a
/// listing must ask for URL-encoded keys (`encoding-type=url`) to receive it at all.
#[test]
fn a_key_with_nul_in_the_bucket_is_skipped_and_the_rest_listed() {
    let _turn = common::shared();
    let s = server();
    put(&s, "ok", "ok");
    put(&s, "bad\0key", "hidden");
    put(&s, "d/ctrl\u{1}char", "not XML 1.0 either");
    put(&s, "d/fine", "fine");
    let m = Mount::new(&s, &[]);
    let mut names: Vec<String> = walk(&m.path).into_iter().collect();
    names.sort();
    assert_eq!(
        names,
        ["d/", "d/ctrl\u{1}char", "d/fine", "ok"],
        "the NUL key is skipped, the rest listed"
    );
    let log = m.unmount();
    assert!(log.contains("NUL byte"), "the skipped key is logged:\n{log}");
    assert_eq!(s.backend().keys(BUCKET).len(), 4, "nothing lost");
}

#[test]
fn hugging_face_forbidden_names_at_mkdir_and_rename_are_einval_and_keep_the_source() {
    let _turn = common::shared();
    let s = start_blocking(ServerConfig::default());
    s.backend().create_bucket("ns");
    s.quirks().emulate_hugging_face();
    s.backend().put_object("ns", "cfg/config.json", "{}", &[]).unwrap();
    let m = Mount::source(&s, "hf://org/ns", &s.endpoint.clone(), &[]);
    assert_eq!(errno(fs::create_dir(m.join("back\\slash"))), libc::EINVAL, "mkdir");
    assert_eq!(
        errno(fs::rename(m.join("cfg/config.json"), m.join("cfg/x\\y"))),
        libc::EINVAL,
        "rename"
    );
    assert_eq!(
        errno(fs::rename(m.join("cfg"), m.join("up.."))),
        libc::EINVAL,
        "rename of a directory"
    );
    assert_eq!(
        fs::read(m.join("cfg/config.json")).unwrap(),
        b"{}",
        "the source is intact"
    );
    assert_eq!(walk(&m.path).len(), 2, "nothing created: {:?}", walk(&m.path));
    let log = m.unmount();
    assert_eq!(
        s.backend().keys("ns"),
        ["cfg/config.json"],
        "the bucket is unchanged:\n{log}"
    );
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// A full volume: close() reports ENOSPC, the bytes stay readable and staged (journal and
/// staging file under --cache-dir); the next fsync after space is freed uploads a small
/// file, and a large one (multipart, aborted, nothing left behind) survives even a crash
/// of the daemon: the next mount with the cache directory uploads it.
#[test]
fn a_full_volume_keeps_the_data_staged_until_it_can_be_uploaded() {
    let _turn = common::shared();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let opts = ["--cache-dir", cache.path().to_str().unwrap(), "--part-size", "5MiB"];
    let m = Mount::new(&s, &opts);
    let (small, large) = (pattern(100_000, 1), pattern(12 << 20, 2));
    s.quirks().set_volume_full(true);
    for (name, data) in [("small", &small), ("large", &large)] {
        let mut f = fs::File::create(m.join(name)).unwrap();
        f.write_all(data).unwrap();
        assert_eq!(errno(f.sync_all()), libc::ENOSPC, "{name}: fsync on a full volume");
        assert!(
            fs::read(m.join(name)).unwrap() == *data,
            "{name}: readable in the mount"
        );
    }
    // Small files' bytes are journaled inline in the journal's log; large ones are staged.
    assert!(count_files(&cache.path().join("journal")) >= 1, "both files journaled");
    assert!(count_files(&cache.path().join("staging")) >= 1, "the large file staged");
    assert!(
        s.backend().pending_uploads(BUCKET).is_empty(),
        "the failed multipart upload was aborted"
    );

    s.quirks().set_volume_full(false);
    let f = fs::OpenOptions::new().write(true).open(m.join("small")).unwrap();
    f.sync_all().expect("fsync once there is space");
    assert!(object(&s, "small") == Some(small), "small uploaded at the retry");
    assert_eq!(
        object(&s, "large"),
        None,
        "precondition: large waits for its next fsync, close or unmount"
    );

    let log = m.kill();
    assert!(!log.contains("panicked"), "{log}");
    let m = Mount::new(&s, &opts);
    assert!(
        object(&s, "large").as_deref() == Some(&large[..]),
        "large recovered from the staging area"
    );
    drop(m);
    assert_eq!(count_files(&cache.path().join("journal")), 0, "journal emptied");
}

fn session_keys(token: &str) -> KeyPair {
    KeyPair {
        access_key: "ASIA-SESSION".into(),
        secret_key: "session-secret".into(),
        session_token: Some(token.into()),
    }
}

/// A session token that expires under a mount with a `--credentials-file`: fsync fails
/// with EACCES and one log line that says so and which file to renew; the data stays
/// readable and staged; once the file holds a valid token the next fsync uploads it,
/// without a remount.
#[test]
fn expired_credentials_are_named_and_the_data_waits_for_renewed_ones() {
    let _turn = common::shared();
    let s = server();
    s.keys().rotate(session_keys("token-1"));
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("vol.cred");
    write_credentials_file(&cred, &session_keys("token-1"));
    let cache = dir.path().join("cache");
    let m = Mount::new(
        &s,
        &[
            "--credentials-file",
            cred.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            // Every lookup asks the bucket: none is answered from the listing just made.
            "--metadata-ttl",
            "0",
        ],
    );
    let mut f = fs::File::create(m.join("dirty")).unwrap();
    f.write_all(b"first half, ").unwrap();

    s.keys().rotate(session_keys("token-2"));
    let data = [&b"first half, "[..], &pattern(100_000, 3)].concat();
    f.write_all(&data[12..]).unwrap();
    assert_eq!(errno(f.sync_all()), libc::EACCES, "fsync with an expired token");
    let log = m.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("credentials expired"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for one failed fsync:\n{log}");
    for wanted in ["ExpiredToken", cred.to_str().unwrap(), "dirty"] {
        assert!(lines[0].contains(wanted), "{wanted:?} in {:?}", lines[0]);
    }
    assert!(fs::read(m.join("dirty")).unwrap() == data, "readable in the mount");
    // Journaled: its bytes, small, inline in the journal's log.
    assert_eq!(count_files(&cache.join("journal")), 1, "journaled");
    assert_eq!(object(&s, "dirty"), None);
    // A lookup of a name not seen yet (a HEAD, whose answer has no body) says the same.
    put(&s, "remote", "r");
    assert_eq!(
        errno(fs::metadata(m.join("remote"))),
        libc::EACCES,
        "stat with an expired token"
    );
    assert!(
        m.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("remote") && l.contains("credentials expired: ExpiredToken")),
        "{}",
        m.log()
    );

    write_credentials_file(&cred, &session_keys("token-2"));
    f.sync_all().expect("fsync once the file holds a valid token");
    assert!(object(&s, "dirty").as_deref() == Some(&data[..]), "uploaded");
    assert_eq!(fs::read(m.join("remote")).unwrap(), b"r");
    drop(f);
    let log = m.unmount();
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(count_files(&cache.join("journal")), 0, "journal emptied\n{log}");
}

/// open(O_RDONLY | O_TRUNC) of a program that is running from the mount: Linux refuses
/// the truncation with ETXTBSY, and the file (and the program) must survive the refusal.
/// With FUSE_ATOMIC_O_TRUNC the truncation travels inside the open request, which the
/// kernel sends before its ETXTBSY check: the filesystem must not have truncated by then.
#[test]
fn a_refused_o_trunc_of_a_running_program_truncates_nothing() {
    let _turn = common::shared();
    use std::os::unix::fs::OpenOptionsExt;
    let s = server();
    let m = Mount::new(&s, &[]);
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep(1)");
    let program = fs::read(sleep).unwrap();
    for i in 0..10 {
        let path = m.join(&format!("prog{i}"));
        fs::write(&path, &program).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut running = Command::new(&path)
            .arg("30")
            .spawn()
            .expect("run the program from the mount");
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&path);
        let alive = running.try_wait().unwrap().is_none();
        let _ = running.kill();
        let status = running.wait().unwrap();
        assert_eq!(errno(opened), libc::ETXTBSY, "prog{i}: O_TRUNC of a running program");
        assert!(
            fs::read(&path).unwrap() == program,
            "prog{i}: the refused O_TRUNC truncated the file"
        );
        assert!(alive, "prog{i}: the running program died ({status})");
    }
    let log = m.unmount();
    for i in 0..10 {
        assert!(
            object(&s, &format!("prog{i}")) == Some(program.clone()),
            "prog{i} in the bucket:\n{log}"
        );
    }
}

/// Objects whose metadata another client (or an attacker with write access to the bucket)
/// filled with nonsense or with a setuid-root mode. Each is looked up by name on a fresh
/// mount, so its HEAD is read: the mount keeps serving every request after it, the
/// special bits are dropped (kept only with --keep-special-modes), the nonsense is ignored
/// with a log line.
#[test]
fn hostile_object_metadata_never_takes_the_mount_down() {
    let _turn = common::shared();
    let s = server();
    let backend = s.backend();
    let hostile: &[(&str, &[(&str, &str)])] = &[
        ("far-future", &[("mtime", "1e20")]),
        ("negative-time", &[("mtime", "-1e30")]),
        ("setuid-root", &[("mode", "35309"), ("uid", "0"), ("gid", "0")]),
        ("claims-a-dir", &[("mode", "16877")]),
        (
            "garbage",
            &[("mode", "rwxr-xr-x"), ("uid", "-5"), ("gid", "99999999999")],
        ),
        ("huge-mode", &[("mode", "4294967295")]),
    ];
    for (key, metadata) in hostile {
        backend.put_object(BUCKET, key, "x", metadata).expect("put");
    }
    put(&s, "plain", "plain");
    let m = Mount::new(&s, &[]);
    let now = std::time::SystemTime::now();
    for (key, _) in hostile {
        let meta = fs::metadata(m.join(key)).unwrap_or_else(|e| panic!("stat {key}: {e}\n{}", m.log()));
        assert!(meta.is_file(), "{key} is a plain file");
        assert_eq!(meta.mode() & 0o7000, 0, "{key}: no setuid, setgid or sticky bit");
        let age = now.duration_since(meta.modified().unwrap()).unwrap_or_default();
        if key.ends_with("time") {
            assert!(
                age < Duration::from_secs(3600),
                "{key}: the object's LastModified, not the nonsense"
            );
        }
        // Every request after it still works.
        assert_eq!(fs::read(m.join("plain")).unwrap(), b"plain", "after {key}");
        fs::write(m.join(&format!("written-after-{key}")), key).unwrap();
    }
    assert_eq!(fs::metadata(m.join("setuid-root")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(m.join("setuid-root")).unwrap().uid(), 0);
    let log = m.unmount();
    assert!(
        log.contains("ignoring metadata"),
        "one log line for the nonsense:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    for (key, _) in hostile {
        assert_eq!(
            object(&s, &format!("written-after-{key}")).as_deref(),
            Some(key.as_bytes())
        );
    }
    let trusting = Mount::new(&s, &["--keep-special-modes", "--kernel-option", "suid"]);
    assert_eq!(
        fs::metadata(trusting.join("setuid-root")).unwrap().mode() & 0o7777,
        0o4755
    );
    let log = trusting.unmount();
    assert!(log.contains("mounted with suid"), "suid is said once at mount:\n{log}");
}
