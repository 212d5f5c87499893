//! A large file the disk cache holds whole is read by the kernel from the cached copy
//! (FUSE passthrough): after a remount no request reaches s3vol for its bytes. Writers
//! and readers through s3vol keep the kernel's rule of one way per open inode.

use crate::common;
use crate::disk_cache::object_files;

use common::{Mount, eventually, pattern, put, server};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Reads `key` (`data`) through a mount on `cache` until the disk cache holds it whole,
/// then mounts again with `extra`.
fn held_whole_then_remounted(
    s: &s3vol::server::RunningServer,
    cache: &Path,
    key: &str,
    data: &[u8],
    extra: &[&str],
) -> Mount {
    put(s, key, data.to_vec());
    let m = Mount::with_cache(s, cache, &[]);
    assert!(std::fs::read(m.join(key)).unwrap() == data);
    assert!(
        eventually(Duration::from_secs(20), || object_files(cache)
            .iter()
            .any(|o| o.complete && o.size == data.len() as u64)),
        "the disk cache never held {key} whole"
    );
    m.unmount();
    Mount::with_cache(s, cache, extra)
}

#[test]
fn a_file_held_whole_is_read_by_the_kernel_after_a_remount() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(20 * MIB + 123, 11);
    let cache = tempfile::tempdir().unwrap();
    let m = held_whole_then_remounted(&s, cache.path(), "model.safetensors", &data, &[]);
    let gets = s.stats().count("GetObject");

    assert!(std::fs::read(m.join("model.safetensors")).unwrap() == data);
    // Reads at random offsets, and through a shared mapping (safetensors' safe_open).
    let mut file = std::fs::File::open(m.join("model.safetensors")).unwrap();
    for at in [17 * MIB + 5, 3, 9 * MIB - 1, data.len() - 10] {
        let mut buf = vec![0u8; 10];
        file.seek(SeekFrom::Start(at as u64)).unwrap();
        file.read_exact(&mut buf).unwrap();
        assert!(buf == data[at..at + 10], "10 bytes at {at}");
    }
    let sum = std::process::Command::new("python3")
        .args([
            "-c",
            "import mmap,sys,zlib;f=open(sys.argv[1],'rb');m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ);print(zlib.crc32(m[:]),len(m))",
        ])
        .arg(m.join("model.safetensors"))
        .output()
        .unwrap();
    let expected = format!("{} {}\n", crc32(&data), data.len());
    assert_eq!(
        String::from_utf8_lossy(&sum.stdout),
        expected,
        "{}",
        String::from_utf8_lossy(&sum.stderr)
    );

    assert_eq!(s.stats().count("GetObject"), gets, "no GET");
    assert_eq!(m.status_count("disk_hits"), 0, "no block read by s3vol");
    assert!(m.status_count("passthrough_opens") >= 3);
    drop(file);

    // A new version of the object is never read from the old copy.
    let new = pattern(20 * MIB, 12);
    put(&s, "model.safetensors", new.clone());
    m.unmount();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert!(std::fs::read(m.join("model.safetensors")).unwrap() == new);
    assert!(s.stats().count("GetObject") > gets);
}

fn crc32(data: &[u8]) -> u32 {
    // zlib's CRC-32, bit by bit: the test needs no crate for it.
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A program reads a file, closes it and opens it for writing at once (a config file
/// rewritten in place): the kernel sends the reader's release without waiting for it, so
/// the writer's open may arrive first. It waits a moment for the readers' releases: here
/// a reader closing 200 ms after the open for writing began.
#[test]
fn an_open_for_writing_waits_a_moment_for_the_readers_releases() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(16 * MIB, 15);
    let cache = tempfile::tempdir().unwrap();
    let m = held_whole_then_remounted(&s, cache.path(), "c.bin", &data, &[]);
    let path = m.join("c.bin");
    let mut reader = std::fs::File::open(&path).unwrap();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(m.status_count("passthrough_opens"), 1, "read from the backing file");
    let writer_path = path.clone();
    let writer = std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(writer_path).map(drop));
    std::thread::sleep(Duration::from_millis(200));
    drop(reader);
    let opened = writer.join().unwrap();
    assert!(opened.is_ok(), "{:?}", opened.err());
    assert!(std::fs::read(&path).unwrap() == data);
}

#[test]
fn a_writer_waits_for_the_kernel_s_readers_and_readers_join_a_writer() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(17 * MIB, 13);
    let cache = tempfile::tempdir().unwrap();
    let m = held_whole_then_remounted(&s, cache.path(), "w.bin", &data, &[]);
    let path = m.join("w.bin");

    // Open for writing while a reader reads the cached copy: refused, nothing changed.
    let reader = std::fs::File::open(&path).unwrap();
    let refused = std::fs::OpenOptions::new().write(true).open(&path).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ETXTBSY), "{refused}");
    let refused = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ETXTBSY), "{refused}");
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; truncate(2) by name is a setattr without an open.
    let truncated = unsafe { libc::truncate(c_path.as_ptr(), 0) };
    let refused = std::io::Error::last_os_error();
    assert_eq!(
        (truncated, refused.raw_os_error()),
        (-1, Some(libc::ETXTBSY)),
        "{refused}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64);
    assert!(m.log().contains("ETXTBSY"), "one log line says why");
    // Another reader joins the first.
    assert!(std::fs::read(&path).unwrap() == data);
    drop(reader);

    // Once the readers are gone a writer opens; readers opened meanwhile read through
    // s3vol and see what the writer wrote.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Nothing written yet: the cached copy is still the file, but the kernel takes no
    // backing file for an inode open through s3vol (it would fail this open with EIO).
    let mut head = vec![0u8; 9];
    std::fs::File::open(&path).unwrap().read_exact(&mut head).unwrap();
    assert!(head == data[..9]);
    writer.write_all(b"new start").unwrap();
    let mut seen = vec![0u8; 9];
    std::fs::File::open(&path).unwrap().read_exact(&mut seen).unwrap();
    assert_eq!(&seen, b"new start");
    common::close(writer).unwrap();
    m.sync();
    let mut expected = data.clone();
    expected[..9].copy_from_slice(b"new start");
    assert!(common::object(&s, "w.bin").unwrap() == expected);
    assert!(std::fs::read(&path).unwrap() == expected);
}

#[test]
fn without_passthrough_the_cached_copy_is_read_through_s3vol() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(16 * MIB, 14);
    let cache = tempfile::tempdir().unwrap();
    let m = held_whole_then_remounted(&s, cache.path(), "f", &data, &["--passthrough", "false"]);
    let gets = s.stats().count("GetObject");
    assert!(std::fs::read(m.join("f")).unwrap() == data);
    assert_eq!(s.stats().count("GetObject"), gets, "no GET");
    assert_eq!(m.status_count("passthrough_opens"), 0);
    assert!(m.status_count("disk_hits") >= 16);
}

/// A file becomes whole in the disk cache while a reader has it open through s3vol:
/// readers opened then read through s3vol too (the kernel would fail an open handed a
/// backing file with EIO, an inode being read both ways).
#[test]
fn readers_of_a_file_read_through_s3vol_are_not_handed_the_copy() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(16 * MIB, 15);
    put(&s, "f", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    let mut first = std::fs::File::open(m.join("f")).unwrap();
    let mut all = Vec::new();
    first.read_to_end(&mut all).unwrap();
    assert!(all == data);
    assert!(
        eventually(Duration::from_secs(20), || object_files(cache.path())
            .iter()
            .any(|o| o.complete)),
        "never whole on disk"
    );
    assert!(std::fs::read(m.join("f")).unwrap() == data, "a second reader");
    assert_eq!(m.status_count("passthrough_opens"), 0);
}

/// A file this mount read through s3vol is read again from the kernel's page cache
/// (faster than from the disk), not from the cached copy.
#[test]
fn a_file_read_on_this_mount_is_read_again_from_the_page_cache() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(16 * MIB, 16);
    put(&s, "f", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert!(std::fs::read(m.join("f")).unwrap() == data);
    assert!(
        eventually(Duration::from_secs(20), || object_files(cache.path())
            .iter()
            .any(|o| o.complete)),
        "never whole on disk"
    );
    let gets = s.stats().count("GetObject");
    assert!(std::fs::read(m.join("f")).unwrap() == data);
    assert_eq!(m.status_count("passthrough_opens"), 0);
    assert_eq!(s.stats().count("GetObject"), gets);
}
