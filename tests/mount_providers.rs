//! Provider quirks through a real mount: Hugging Face (302 redirects, no checksums, no
//! markers, no user metadata, forbidden names) and Runpod (hidden upload folder,
//! repeated continuation token, PutObject cap, no UploadPartCopy / DeleteObjects).

mod common;

use common::{Mount, object, pattern, put, server, walk};
use s3vol::server::{ServerConfig, start_blocking};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// The real gateway scopes the endpoint to the namespace (`https://s3.hf.co/ns/`, the
/// trailing-slash rule is unit-tested in provider.rs); the test server has no namespaces,
/// so the endpoint here is the server's root and the HF bucket is a bucket.
fn hf_mount(extra: &[&str]) -> (s3vol::server::RunningServer, Mount) {
    let s = start_blocking(ServerConfig::default());
    s.backend().create_bucket("ns");
    s.quirks().emulate_hugging_face();
    s.backend()
        .put_object("ns", "model.bin", pattern(5 << 20, 9), &[])
        .unwrap();
    s.backend().put_object("ns", "cfg/config.json", "{}", &[]).unwrap();
    let m = Mount::source(&s, "hf://org/ns", &s.endpoint.clone(), extra);
    (s, m)
}

#[test]
fn hugging_face_reads_follow_redirects_and_writes_send_no_checksums() {
    let (s, m) = hf_mount(&[]);
    assert!(fs::read(m.join("model.bin")).unwrap() == pattern(5 << 20, 9));
    assert!(s.stats().count("RedirectGet") > 0, "{:?}", s.stats().snapshot());
    // A ranged read in the middle goes through the CDN too.
    let f = fs::File::open(m.join("model.bin")).unwrap();
    let mut buf = vec![0u8; 1000];
    f.read_exact_at(&mut buf, 3_000_000).unwrap();
    assert!(buf == pattern(5 << 20, 9)[3_000_000..3_001_000]);

    fs::write(m.join("cfg/new.txt"), "written").unwrap();
    let stored = s.backend().get_object("ns", "cfg/new.txt").expect("uploaded");
    assert_eq!(stored.body.to_vec(), b"written");
    assert!(stored.metadata.is_empty(), "HF keeps no user metadata");
}

#[test]
fn hugging_face_directories_live_in_the_mount_until_a_file_is_written() {
    let (s, m) = hf_mount(&[]);
    fs::create_dir(m.join("empty")).unwrap();
    assert!(m.join("empty").is_dir());
    assert!(
        s.backend().keys("ns").iter().all(|k| !k.ends_with('/')),
        "no marker objects on HF"
    );
    fs::create_dir(m.join("later")).unwrap();
    fs::write(m.join("later/file"), "x").unwrap();
    assert_eq!(
        s.backend().get_object("ns", "later/file").map(|o| o.body.to_vec()),
        Some(b"x".to_vec())
    );
    fs::remove_dir(m.join("empty")).unwrap();
    assert!(!m.join("empty").exists());
}

#[test]
fn hugging_face_forbidden_names_are_einval() {
    let (_s, m) = hf_mount(&[]);
    let err = fs::write(m.join("back\\slash"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    let err = fs::write(m.join("ends.."), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert!(m.unmount().contains("forbids this name"));
}

fn runpod(extra: &[&str]) -> (s3vol::server::RunningServer, Mount) {
    let s = start_blocking(ServerConfig {
        min_part_size: 0,
        ..ServerConfig::default()
    });
    s.backend().create_bucket("vol");
    s.quirks().emulate_runpod();
    let m = Mount::source(&s, "runpod://EU-RO-1/vol", &s.endpoint.clone(), extra);
    (s, m)
}

#[test]
fn runpod_hides_its_upload_folder_and_survives_repeated_tokens() {
    let s = start_blocking(ServerConfig::default());
    s.backend().create_bucket("vol");
    s.quirks().emulate_runpod();
    s.backend()
        .put_object("vol", ".s3compat_uploads/abc/part1", "x", &[])
        .unwrap();
    for i in 0..2200 {
        s.backend()
            .put_object("vol", &format!("data/f{i:04}"), "d", &[])
            .unwrap();
    }
    let m = Mount::source(&s, "runpod://EU-RO-1/vol", &s.endpoint.clone(), &[]);
    let root: Vec<String> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(root, ["data"]);
    assert!(!m.join(".s3compat_uploads").exists());
    let names = fs::read_dir(m.join("data")).unwrap().count();
    assert_eq!(names, 2200, "every entry exactly once despite the repeated tokens");
}

#[test]
fn runpod_large_files_use_multipart_below_the_put_cap() {
    let (s, m) = runpod(&["--max-put-size", "1MiB", "--part-size", "1MiB"]);
    s.quirks().set_max_put_size(Some(1 << 20));
    let data = pattern(3 << 20, 11);
    let mut f = fs::File::create(m.join("ckpt.bin")).unwrap();
    f.write_all(&data).unwrap();
    drop(f);
    assert!(object_in(&s, "vol", "ckpt.bin") == data);
    assert_eq!(
        s.stats().count("PutObject"),
        0,
        "over the cap: multipart only {:?}",
        s.stats().snapshot()
    );
    // Partial update without UploadPartCopy: unchanged ranges are fetched and re-sent.
    let f = fs::OpenOptions::new().write(true).open(m.join("ckpt.bin")).unwrap();
    f.write_all_at(b"x", 10).unwrap();
    drop(f);
    let mut want = data.clone();
    want[10] = b'x';
    assert!(object_in(&s, "vol", "ckpt.bin") == want);
    assert_eq!(s.stats().count("UploadPartCopy"), 0);
    // Directory removal deletes one key at a time (no DeleteObjects).
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/a"), "a").unwrap();
    fs::remove_file(m.join("d/a")).unwrap();
    fs::remove_dir(m.join("d")).unwrap();
    assert_eq!(s.stats().count("DeleteObjects"), 0);
    assert_eq!(walk(&m.path).len(), 1);
}

fn object_in(s: &s3vol::server::RunningServer, bucket: &str, key: &str) -> Vec<u8> {
    s.backend()
        .get_object(bucket, key)
        .map(|o| o.body.to_vec())
        .unwrap_or_default()
}

#[test]
fn transient_errors_are_retried_through_the_mount() {
    let s = server();
    put(&s, "f", pattern(2 << 20, 4));
    let m = Mount::new(&s, &[]);
    s.quirks().inject_errors(
        2,
        s3vol::server::InjectedFailure::BadGateway,
        s3vol::server::RequestFilter::Any,
    );
    assert!(fs::read(m.join("f")).unwrap() == pattern(2 << 20, 4));
    s.quirks().reset_mid_body(1, 100_000);
    let f = fs::File::open(m.join("f")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact_at(&mut buf, 1 << 20).unwrap();
    assert!(buf == pattern(2 << 20, 4)[1 << 20..]);
    s.quirks().inject_errors(
        2,
        s3vol::server::InjectedFailure::SlowDown,
        s3vol::server::RequestFilter::Any,
    );
    fs::write(m.join("g"), "after throttling").unwrap();
    assert_eq!(object(&s, "g").as_deref(), Some(&b"after throttling"[..]));
}
