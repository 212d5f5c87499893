//! Writing through a real FUSE mount: files, uploads, namespace changes, errors.

use crate::common;

use common::{BUCKET, Mount, object, pattern, put, server, walk};
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or_else(|| panic!("no errno in {e}"))
}

#[test]
fn file_lifecycle_reads_its_own_writes_and_uploads_at_close() {
    let _turn = common::shared();
    let s = server();
    // close() waits for the upload in this mode: the bucket is checked right after it.
    let m = Mount::new(&s, &["--upload-mode", "on-close"]);
    let p = m.join("f.txt");
    let mut f = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all(b"hello world").unwrap();
    // Read-your-writes before any upload.
    let mut buf = [0u8; 5];
    f.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"world");
    assert_eq!(object(&s, "f.txt"), None, "nothing is uploaded before close");
    f.write_all_at(b"J", 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        object(&s, "f.txt").as_deref(),
        Some(&b"Jello world"[..]),
        "fsync uploads"
    );
    drop(f);

    // O_EXCL on an existing name.
    let err = OpenOptions::new().write(true).create_new(true).open(&p).unwrap_err();
    assert_eq!(errno(err), libc::EEXIST);

    // O_APPEND.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    assert_eq!(object(&s, "f.txt").as_deref(), Some(&b"Jello world!"[..]));

    // Truncate a file that is not open: shrink, then grow with zeros.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    drop(f);
    fs::File::options().write(true).open(&p).unwrap().set_len(5).unwrap();
    assert_eq!(object(&s, "f.txt").as_deref(), Some(&b"Jello"[..]));
    std::process::Command::new("truncate")
        .args(["-s", "8"])
        .arg(&p)
        .status()
        .unwrap();
    assert_eq!(object(&s, "f.txt").as_deref(), Some(&b"Jello\0\0\0"[..]));
    assert_eq!(fs::metadata(&p).unwrap().len(), 8);

    // O_TRUNC, then an overwrite in the middle.
    fs::write(&p, b"0123456789").unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"ab", 4).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"0123ab6789");
    assert_eq!(object(&s, "f.txt").as_deref(), Some(&b"0123ab6789"[..]));

    // Empty files exist.
    fs::File::create(m.join("empty")).unwrap();
    assert_eq!(object(&s, "empty").as_deref(), Some(&b""[..]));
}

/// `truncate(path)` right after a `close`: the kernel sends the handle's release without
/// waiting for it, so the truncate races with the release dropping the file's clean data
/// (once lost silently, 1 in 15 times: pjdfstest's truncate::extend_file_shrink_sparse),
/// and may find the file still open for writing (once left to that release to upload,
/// after the truncate returned: 1 in 150 times).
#[test]
fn a_truncate_right_after_close_reaches_the_bucket() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &[]);
    let truncate = |p: &std::path::Path, size: i64| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::truncate(c.as_ptr(), size) };
        assert_eq!(
            rc,
            0,
            "truncate {} to {size}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    };
    for i in 0..150 {
        let name = format!("t{i}");
        let p = m.join(&name);
        fs::File::create(&p).unwrap();
        truncate(&p, 1_234_567);
        assert_eq!(fs::symlink_metadata(&p).unwrap().len(), 1_234_567);
        assert_eq!(object(&s, &name).map(|o| o.len()), Some(1_234_567), "{name} grown");
        truncate(&p, 567);
        assert_eq!(fs::symlink_metadata(&p).unwrap().len(), 567);
        assert_eq!(object(&s, &name).as_deref(), Some(&[0u8; 567][..]), "{name} shrunk");
    }
}

/// `st_blksize` sizes the buffers of programs: large writes into a file being written
/// (`cp`'s destination), modest buffers for reading one with data (BENCHMARKS.md item 142).
#[test]
fn a_new_file_asks_for_large_writes_and_a_stored_one_for_modest_reads() {
    let _turn = common::shared();
    let s = server();
    put(&s, "stored.bin", pattern(1_024_000, 3));
    let m = Mount::new(&s, &[]);
    let new = fs::File::create(m.join("new.bin")).unwrap();
    assert_eq!(new.metadata().unwrap().blksize(), 1 << 20);
    assert_eq!(fs::metadata(m.join("stored.bin")).unwrap().blksize(), 128 << 10);
}

#[test]
fn many_handles_see_one_content() {
    let _turn = common::shared();
    let s = server();
    put(&s, "shared", "aaaaaaaaaa");
    let m = Mount::new(&s, &[]);
    let p = m.join("shared");
    let w1 = OpenOptions::new().write(true).open(&p).unwrap();
    let w2 = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    w1.write_all_at(b"XX", 0).unwrap();
    w2.write_all_at(b"YY", 8).unwrap();
    let mut buf = vec![0u8; 10];
    w2.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, b"XXaaaaaaYY");
    drop(w1);
    drop(w2);
    m.sync();
    assert_eq!(object(&s, "shared").as_deref(), Some(&b"XXaaaaaaYY"[..]));
}

#[test]
fn chmod_chown_and_utimens_persist_as_s3fs_metadata() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &[]);
    let p = m.join("meta");
    fs::write(&p, "x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(when)
        .unwrap();
    m.sync();
    let stored = s.backend().get_object(BUCKET, "meta").unwrap();
    assert_eq!(
        stored.metadata.get("mode").map(String::as_str),
        Some("33152"),
        "{:?}",
        stored.metadata
    );
    assert_eq!(stored.metadata.get("uid").map(String::as_str), Some("1234"));
    assert_eq!(stored.metadata.get("gid").map(String::as_str), Some("5678"));
    assert_eq!(stored.metadata.get("mtime").map(String::as_str), Some("1600000000"));
    drop(m);
    let m = Mount::new(&s, &[]);
    let meta = fs::metadata(m.join("meta")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid(), meta.mtime()),
        (0o600, 1234, 5678, 1_600_000_000)
    );
}

#[test]
fn changing_part_of_a_large_object_copies_the_rest_server_side() {
    let _turn = common::shared();
    let s = server();
    let mut data = pattern(24 << 20, 3);
    put(&s, "large", data.clone());
    let m = Mount::new(&s, &["--part-size", "8MiB"]);
    let f = OpenOptions::new().write(true).open(m.join("large")).unwrap();
    f.write_all_at(b"patched", 9 << 20).unwrap();
    drop(f);
    data[9 << 20..(9 << 20) + 7].copy_from_slice(b"patched");
    m.sync();
    assert!(
        object(&s, "large").unwrap() == data,
        "content differs after the partial update"
    );
    assert_eq!(s.stats().count("UploadPartCopy"), 2, "{:?}", s.stats().snapshot());
    assert_eq!(s.stats().count("UploadPart"), 1, "{:?}", s.stats().snapshot());
}

#[test]
fn a_large_sequential_write_streams_parts_before_close() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &["--part-size", "5MiB"]);
    let data = pattern(23 << 20, 4);
    let mut f = fs::File::create(m.join("stream")).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    // The multipart upload is created by the write that completes the first part. (Other
    // tests' fork+exec closing inherited descriptors can send FLUSH meanwhile, which
    // uploads what was written so far: exact part counts would be flaky.)
    assert!(
        s.stats().count("CreateMultipartUpload") >= 1,
        "{:?}",
        s.stats().snapshot()
    );
    drop(f);
    m.sync();
    assert!(object(&s, "stream").unwrap() == data);
    assert!(
        s.stats().count("UploadPart") >= 4,
        "{:?}\n{}",
        s.stats().snapshot(),
        m.log()
    );
    assert!(s.backend().pending_uploads(BUCKET).is_empty());
}

/// A rename moves the object server-side: in one CopyObject below eight parts, in parts
/// copied at once (UploadPartCopy) from eight on, as a checkpoint's `ckpt.tmp -> ckpt`:
/// one round of at most eight, here 41 MiB in seven of 6 MiB where uploads use 5 MiB.
#[test]
fn a_large_file_is_renamed_by_a_copy_in_parts_a_small_one_in_one_copy() {
    let _turn = common::shared();
    let s = server();
    let large = pattern(41 << 20, 5);
    let small = pattern(3 << 20, 6);
    put(&s, "dir/large.tmp", large.clone());
    put(&s, "dir/small.tmp", small.clone());
    let m = Mount::new(&s, &["--part-size", "5MiB"]);
    s.stats().reset();
    fs::rename(m.join("dir/large.tmp"), m.join("dir/large")).unwrap();
    let stats = s.stats().snapshot();
    assert_eq!(s.stats().count("UploadPartCopy"), 7, "{stats:?}");
    assert_eq!(s.stats().count("CopyObject"), 0, "{stats:?}");
    assert_eq!(
        s.stats().count("UploadPart"),
        0,
        "no byte goes through the mount: {stats:?}"
    );
    s.stats().reset();
    fs::rename(m.join("dir/small.tmp"), m.join("dir/small")).unwrap();
    assert_eq!(s.stats().count("CopyObject"), 1, "{:?}", s.stats().snapshot());
    assert_eq!(s.stats().count("UploadPartCopy"), 0, "{:?}", s.stats().snapshot());
    m.sync();
    assert!(object(&s, "dir/large").unwrap() == large);
    assert!(object(&s, "dir/small").unwrap() == small);
    assert!(object(&s, "dir/large.tmp").is_none() && object(&s, "dir/small.tmp").is_none());
    assert!(s.backend().pending_uploads(BUCKET).is_empty());
    assert_eq!(fs::read(m.join("dir/large")).unwrap().len(), large.len());
}

/// A provider that turns part copies down after all (501) still gets the rename: the
/// copy in one round of large parts gives way to parts of the usual size, read through
/// the mount and sent, and the refused upload leaves nothing pending.
#[test]
fn a_rename_whose_part_copies_are_refused_is_sent_in_usual_parts() {
    let _turn = common::shared();
    let s = server();
    let large = pattern(41 << 20, 7);
    put(&s, "big.tmp", large.clone());
    let m = Mount::new(&s, &["--part-size", "5MiB"]);
    s.quirks().set_reject_upload_part_copy(true);
    s.stats().reset();
    fs::rename(m.join("big.tmp"), m.join("big")).unwrap();
    let stats = s.stats().snapshot();
    assert_eq!(s.stats().count("UploadPart"), 9, "{stats:?}\n{}", m.log());
    assert!(object(&s, "big").unwrap() == large);
    assert!(object(&s, "big.tmp").is_none());
    assert!(s.backend().pending_uploads(BUCKET).is_empty(), "{stats:?}");
}

/// `--unsigned-payload true` sends upload bodies as UNSIGNED-PAYLOAD (the default over
/// HTTPS; this server is plain HTTP, where bodies are signed unless asked): every
/// PutObject and UploadPart, and the server takes them whole.
#[test]
fn upload_bodies_go_unsigned_when_asked_and_signed_over_http_by_default() {
    let _turn = common::shared();
    let s = server();
    let small = pattern(300 << 10, 11);
    let large = pattern(13 << 20, 12);
    let m = Mount::new(&s, &["--part-size", "5MiB", "--unsigned-payload", "true"]);
    fs::write(m.join("small"), &small).unwrap();
    fs::write(m.join("large"), &large).unwrap();
    m.sync();
    let stats = s.stats().snapshot();
    let bodies = s.stats().count("PutObject") + s.stats().count("UploadPart");
    assert!(bodies >= 4, "{stats:?}");
    assert_eq!(s.stats().unsigned_payloads(), bodies, "{stats:?}");
    assert!(object(&s, "small").unwrap() == small && object(&s, "large").unwrap() == large);
    drop(m);
    s.stats().reset();
    let m = Mount::new(&s, &["--part-size", "5MiB"]);
    fs::write(m.join("signed"), &large).unwrap();
    m.sync();
    assert!(s.stats().count("UploadPart") >= 3, "{:?}", s.stats().snapshot());
    assert_eq!(s.stats().unsigned_payloads(), 0, "{:?}", s.stats().snapshot());
    assert!(object(&s, "signed").unwrap() == large);
}

/// Streamed parts are sent from memory, gathered as the writes arrive (`part_gather.rs`):
/// writes that straddle part boundaries, and rewrites of bytes already gathered, must
/// still reach the bucket exactly as written.
#[test]
fn a_large_file_written_in_order_with_rewrites_of_its_tail_uploads_what_was_written() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &["--part-size", "5MiB"]);
    let mut data = pattern(31 << 20, 9);
    let f = fs::File::create(m.join("odd")).unwrap();
    let mut at = 0;
    for (i, chunk) in data.clone().chunks(700 << 10).enumerate() {
        f.write_all_at(chunk, at).unwrap();
        at += chunk.len() as u64;
        if i % 9 == 8 {
            // A rewrite of bytes just written, in the part still being filled.
            let back = at - 300_000;
            let patch = vec![i as u8; 1000];
            f.write_all_at(&patch, back).unwrap();
            data[back as usize..back as usize + 1000].copy_from_slice(&patch);
        }
    }
    drop(f);
    m.sync();
    assert!(object(&s, "odd").unwrap() == data, "{}", m.log());
    assert!(s.stats().count("UploadPart") >= 5, "{:?}", s.stats().snapshot());
    assert!(s.backend().pending_uploads(BUCKET).is_empty());
}

/// Readers that hold pages of a file, through read() or mmap, see the bytes another
/// handle, write-only, writes (whole pages go to the staging file with O_DIRECT, the rest
/// buffered: `direct_write.rs`).
#[test]
fn bytes_written_through_a_write_only_handle_reach_open_readers_and_mappings() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &[]);
    let p = m.join("w");
    fs::write(&p, vec![b'a'; 1 << 20]).unwrap();
    // Opened and read before the write, so their pages are cached and no open after the
    // write drops them.
    let reader = fs::File::open(&p).unwrap();
    let mut first = [0u8; 4];
    reader.read_exact_at(&mut first, 0).unwrap();
    assert_eq!(&first, b"aaaa");
    let mapped = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    // SAFETY: a shared mapping of 1 MiB of an open file, read and unmapped below.
    let map = unsafe {
        use std::os::fd::AsRawFd;
        libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ,
            libc::MAP_SHARED,
            mapped.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    // SAFETY: within the mapping.
    let at = |offset: usize| unsafe { *(map as *const u8).add(offset) };
    assert_eq!(at(8192), b'a');

    let writer = OpenOptions::new().write(true).open(&p).unwrap();
    let data = pattern(4 << 20, 9);
    writer.write_all_at(&data, 0).unwrap();
    let mut back = vec![0u8; 4 << 20];
    reader.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data, "the open reader sees the new bytes");
    assert_eq!(at(8192), data[8192], "so does the mapping");
    // An unaligned write (it goes through the cache) and an append.
    writer.write_all_at(b"xyz", 5).unwrap();
    drop(writer);
    let mut appender = OpenOptions::new().append(true).open(&p).unwrap();
    appender.write_all(b"END").unwrap();
    drop(appender);
    reader.read_exact_at(&mut first, 4).unwrap();
    assert_eq!(&first, &[data[4], b'x', b'y', b'z']);
    assert_eq!(at(6), b'y');
    // SAFETY: mapped above.
    unsafe { libc::munmap(map, 1 << 20) };
    drop((reader, mapped));
    m.sync();
    let mut expected = data;
    expected[5..8].copy_from_slice(b"xyz");
    expected.extend_from_slice(b"END");
    assert!(object(&s, "w").unwrap() == expected);
}

#[test]
fn unlinked_open_files_keep_working_until_closed() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(3 << 20, 5);
    put(&s, "doomed", data.clone());
    let m = Mount::new(&s, &[]);
    let f = fs::File::open(m.join("doomed")).unwrap();
    fs::remove_file(m.join("doomed")).unwrap();
    assert!(!m.join("doomed").exists());
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact_at(&mut buf, 2 << 20).unwrap();
    assert!(buf == data[2 << 20..3 << 20]);
    drop(f);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(object(&s, "doomed"), None);
}

#[test]
fn renames_of_files_and_directories() {
    let _turn = common::shared();
    let s = server();
    put(&s, "a.txt", "A");
    put(&s, "b.txt", "B");
    for i in 0..40 {
        put(&s, &format!("dir/sub/f{i}"), format!("{i}"));
    }
    put(&s, "dir/", "");
    let m = Mount::new(&s, &[]);
    fs::rename(m.join("a.txt"), m.join("c.txt")).unwrap();
    assert_eq!(object(&s, "a.txt"), None);
    assert_eq!(object(&s, "c.txt").as_deref(), Some(&b"A"[..]));
    // Over an existing file.
    fs::rename(m.join("c.txt"), m.join("b.txt")).unwrap();
    assert_eq!(fs::read_to_string(m.join("b.txt")).unwrap(), "A");
    assert_eq!(object(&s, "c.txt"), None);
    // A directory with everything under it.
    fs::rename(m.join("dir"), m.join("moved")).unwrap();
    let keys = s.backend().keys(BUCKET);
    assert!(keys.iter().all(|k| !k.starts_with("dir/")), "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("moved/sub/")).count(), 40);
    assert!(keys.contains(&"moved/".to_string()));
    assert_eq!(fs::read_to_string(m.join("moved/sub/f7")).unwrap(), "7");
    // A file written but not yet closed, renamed.
    let mut f = fs::File::create(m.join("tmp")).unwrap();
    f.write_all(b"draft").unwrap();
    fs::rename(m.join("tmp"), m.join("final")).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    m.sync();
    assert_eq!(object(&s, "final").as_deref(), Some(&b"draft!"[..]));
    assert_eq!(object(&s, "tmp"), None);
}

#[test]
fn directories_markers_and_enotempty() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &[]);
    fs::create_dir(m.join("d")).unwrap();
    m.sync();
    assert_eq!(object(&s, "d/").as_deref(), Some(&b""[..]));
    fs::write(m.join("d/f"), "x").unwrap();
    assert_eq!(errno(fs::remove_dir(m.join("d")).unwrap_err()), libc::ENOTEMPTY);
    fs::remove_file(m.join("d/f")).unwrap();
    fs::remove_dir(m.join("d")).unwrap();
    m.sync();
    assert!(s.backend().keys(BUCKET).is_empty());
    fs::create_dir_all(m.join("keep/empty")).unwrap();
    drop(m);
    let m = Mount::new(&s, &[]);
    assert!(m.join("keep/empty").is_dir(), "empty directories survive a remount");
    assert_eq!(errno(fs::create_dir(m.join("keep")).unwrap_err()), libc::EEXIST);
    assert_eq!(errno(fs::remove_file(m.join("keep")).unwrap_err()), libc::EISDIR);
    fs::write(m.join("plain"), "x").unwrap();
    assert_eq!(errno(fs::read_dir(m.join("plain")).unwrap_err()), libc::ENOTDIR);
}

#[test]
fn symlinks_are_s3fs_compatible() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &[]);
    fs::write(m.join("target"), "t").unwrap();
    std::os::unix::fs::symlink("target", m.join("link")).unwrap();
    assert_eq!(fs::read_link(m.join("link")).unwrap().to_str(), Some("target"));
    assert_eq!(fs::read_to_string(m.join("link")).unwrap(), "t");
    let stored = s.backend().get_object(BUCKET, "link").unwrap();
    assert_eq!(stored.body.to_vec(), b"target");
    let mode: u32 = stored.metadata["mode"].parse().unwrap();
    assert_eq!(mode & 0o170000, 0o120000);
    drop(m);
    let m = Mount::new(&s, &[]);
    assert!(fs::symlink_metadata(m.join("link")).unwrap().file_type().is_symlink());
}

#[test]
fn errors_map_to_errno() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &[]);
    let long = "x".repeat(256);
    assert_eq!(errno(fs::write(m.join(&long), "x").unwrap_err()), libc::ENAMETOOLONG);
    assert_eq!(
        errno(fs::hard_link(m.join("a"), m.join("b")).unwrap_err()),
        libc::ENOENT
    );
    fs::write(m.join("a"), "a").unwrap();
    assert_eq!(errno(fs::hard_link(m.join("a"), m.join("b")).unwrap_err()), libc::EPERM);
}

#[test]
fn a_full_volume_is_enospc_and_loses_nothing() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &[]);
    s.quirks().set_volume_full(true);
    let mut f = fs::File::create(m.join("precious")).unwrap();
    f.write_all(b"keep me").unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(errno(err), libc::ENOSPC);
    drop(f);
    assert_eq!(
        fs::read(m.join("precious")).unwrap(),
        b"keep me",
        "the data stays readable in the mount"
    );
    s.quirks().set_volume_full(false);
    let log = m.unmount();
    assert_eq!(
        object(&s, "precious").as_deref(),
        Some(&b"keep me"[..]),
        "uploaded at unmount:\n{log}"
    );
    assert!(log.contains("no space left"), "{log}");
}

#[test]
fn read_only_mount_refuses_every_change() {
    let _turn = common::shared();
    let s = server();
    put(&s, "f", "x");
    put(&s, "d/", "");
    let m = Mount::new(&s, &["--read-only"]);
    assert_eq!(errno(fs::create_dir(m.join("n")).unwrap_err()), libc::EROFS);
    assert_eq!(errno(fs::remove_file(m.join("f")).unwrap_err()), libc::EROFS);
    assert_eq!(errno(fs::rename(m.join("f"), m.join("g")).unwrap_err()), libc::EROFS);
    assert_eq!(errno(fs::remove_dir(m.join("d")).unwrap_err()), libc::EROFS);
    assert_eq!(
        errno(fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o600)).unwrap_err()),
        libc::EROFS
    );
    assert_eq!(walk(&m.path).len(), 2);
}

#[test]
fn deferred_uploads_complete_in_the_background() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &["--upload-on-close", "false"]);
    for i in 0..200 {
        let mut f = fs::File::create(m.join(&format!("f{i}"))).unwrap();
        f.write_all(format!("{i}").as_bytes()).unwrap();
    }
    let mut f = OpenOptions::new().write(true).open(m.join("f7")).unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"+").unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.unmount();
    for i in 0..200 {
        let want = if i == 7 { "7+".to_string() } else { i.to_string() };
        assert_eq!(object(&s, &format!("f{i}")), Some(want.into_bytes()), "f{i}");
    }
}

#[test]
fn creating_many_files_in_a_directory_lists_it_once_per_ttl() {
    let _turn = common::shared();
    let s = server();
    put(&s, "d/existing", "x");
    let m = Mount::new(&s, &["--metadata-ttl", "30"]);
    let before = (s.stats().count("ListObjectsV2"), s.stats().count("HeadObject"));
    for i in 0..100 {
        fs::write(m.join(&format!("d/new{i}")), "y").unwrap();
    }
    let lists = s.stats().count("ListObjectsV2") - before.0;
    let heads = s.stats().count("HeadObject") - before.1;
    assert!(lists <= 3, "{lists} LIST requests for 100 creates");
    assert!(heads <= 3, "{heads} HEAD requests for 100 creates");
    m.sync();
    assert_eq!(s.backend().keys(BUCKET).len(), 101);
}

#[test]
fn deferred_deletes_and_names_created_again() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &["--upload-on-close", "false"]);
    fs::create_dir(m.join("d")).unwrap();
    for i in 0..50 {
        fs::write(m.join(&format!("d/f{i}")), "old").unwrap();
    }
    for i in 0..50 {
        fs::remove_file(m.join(&format!("d/f{i}"))).unwrap();
    }
    assert_eq!(
        fs::read_dir(m.join("d")).unwrap().count(),
        0,
        "gone at once in the mount"
    );
    fs::write(m.join("d/f7"), "new").unwrap();
    fs::remove_file(m.join("d/f7")).unwrap();
    fs::remove_dir(m.join("d")).unwrap();
    fs::write(m.join("again"), "1").unwrap();
    fs::remove_file(m.join("again")).unwrap();
    fs::write(m.join("again"), "2").unwrap();
    m.unmount();
    assert_eq!(s.backend().keys(BUCKET), ["again"]);
    assert_eq!(object(&s, "again").as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_name_created_again_while_the_old_file_is_open_keeps_the_new_file() {
    let _turn = common::shared();
    let s = server();
    put(&s, "f", "old");
    let m = Mount::new(&s, &[]);
    let old = fs::File::open(m.join("f")).unwrap();
    fs::remove_file(m.join("f")).unwrap();
    fs::write(m.join("f"), "new").unwrap();
    drop(old);
    std::thread::sleep(std::time::Duration::from_millis(200));
    m.sync();
    assert_eq!(object(&s, "f").as_deref(), Some(&b"new"[..]));
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "new");
}

/// `--upload-on-close false` puts directory markers in the background; removing, renaming
/// or re-creating a directory right after mkdir still leaves exactly the markers wanted.
#[test]
fn deferred_directory_markers_settle_before_rmdir_and_rename() {
    let _turn = common::shared();
    let s = server();
    let m = Mount::new(&s, &["--upload-on-close", "false", "--metadata-ttl", "30"]);
    for i in 0..40 {
        fs::create_dir(m.join(&format!("d{i}"))).unwrap();
    }
    for i in 0..10 {
        fs::remove_dir(m.join(&format!("d{i}"))).unwrap();
    }
    for i in 10..20 {
        fs::rename(m.join(&format!("d{i}")), m.join(&format!("r{i}"))).unwrap();
    }
    for i in 20..25 {
        fs::remove_dir(m.join(&format!("d{i}"))).unwrap();
        fs::create_dir(m.join(&format!("d{i}"))).unwrap();
    }
    fs::create_dir(m.join("d30/sub")).unwrap();
    fs::write(m.join("d30/sub/f"), "x").unwrap();
    m.unmount();
    let mut want: Vec<String> = (20..40).map(|i| format!("d{i}/")).collect();
    want.extend((10..20).map(|i| format!("r{i}/")));
    want.extend(["d30/sub/".to_string(), "d30/sub/f".to_string()]);
    want.sort();
    assert_eq!(s.backend().keys(BUCKET), want);
}

/// `rm -r` lists each directory, unlinks its entries, then removes it: the listing it just
/// emptied answers whether the directory is empty, without another LIST.
#[test]
fn rm_r_trusts_the_listing_it_just_emptied() {
    let _turn = common::shared();
    let s = server();
    for d in 0..10 {
        for f in 0..5 {
            put(&s, &format!("t/d{d}/f{f}"), "x");
        }
    }
    let m = Mount::new(&s, &["--metadata-ttl", "60", "--list-prefetch", "false"]);
    let before = s.stats().count("ListObjectsV2");
    fs::remove_dir_all(m.join("t")).unwrap();
    let lists = s.stats().count("ListObjectsV2") - before;
    // The lookup of t (a listing of the root), then one LIST per directory read.
    assert!(lists <= 12, "{lists} LIST requests for rm -r of 11 directories");
    m.sync();
    assert!(s.backend().keys(BUCKET).is_empty());
}
