//! An endpoint over https, as every provider s3vol targets is reached: the embedded server
//! behind TLS with a certificate of a private CA (`tests/it/tls/`), trusted through
//! `--ca-bundle` or `AWS_CA_BUNDLE`.

use crate::common::{self, BUCKET, Mount, TEST_CA, object, pattern, put, tls_server};
use std::fs;
use std::os::unix::fs::FileExt;

/// Reads (s3vol's own GETs on hyper-rustls), writes (the SDK's PUTs and multipart parts,
/// unsigned over https), a rename (server-side copies) and listings, then a remount that
/// trusts the CA through the environment and reads everything back from an empty cache.
#[test]
fn a_bucket_behind_a_private_ca_is_read_written_and_renamed_over_https() {
    let _turn = common::shared();
    let s = tls_server();
    assert!(s.endpoint.starts_with("https://"), "{}", s.endpoint);
    let seed = pattern(9 << 20, 31);
    put(&s, "dir/seed", seed.clone());
    let small = pattern(200 << 10, 32);
    let large = pattern(13 << 20, 33);

    let m = Mount::new(&s, &["--ca-bundle", TEST_CA, "--part-size", "5MiB"]);
    assert!(fs::read(m.join("dir/seed")).unwrap() == seed, "{}", m.log());
    // A read at an offset: a ranged GET on a connection of its own.
    let mut tail = vec![0; 4096];
    fs::File::open(m.join("dir/seed"))
        .unwrap()
        .read_exact_at(&mut tail, (9 << 20) - 4096)
        .unwrap();
    assert!(tail == seed[seed.len() - 4096..]);
    fs::write(m.join("dir/small"), &small).unwrap();
    fs::write(m.join("large.tmp"), &large).unwrap();
    m.sync();
    fs::rename(m.join("large.tmp"), m.join("dir/large")).unwrap();
    m.sync();
    let mut names: Vec<String> = fs::read_dir(m.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["large", "seed", "small"]);
    let stats = s.stats().snapshot();
    assert!(s.stats().count("GetObject") >= 1, "{stats:?}");
    assert!(
        s.stats().count("UploadPartCopy") + s.stats().count("CopyObject") >= 1,
        "{stats:?}"
    );
    // Over https with checksums (the default) bodies go unsigned, as aws-cli sends them.
    let bodies = s.stats().count("PutObject") + s.stats().count("UploadPart");
    assert!(bodies >= 4, "{stats:?}");
    assert_eq!(s.stats().unsigned_payloads(), bodies, "{stats:?}");
    drop(m);
    assert!(object(&s, "dir/small").unwrap() == small);
    assert!(object(&s, "dir/large").unwrap() == large);
    assert_eq!(object(&s, "large.tmp"), None);

    let fresh = tempfile::tempdir().unwrap();
    let endpoint = s.endpoint.clone();
    let (key, secret) = (s.access_key.clone(), s.secret_key.clone());
    let cache = fresh.path().to_str().unwrap();
    let m = Mount::with_env(&format!("s3://{BUCKET}"), &endpoint, &["--cache-dir", cache], |cmd| {
        cmd.env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_CA_BUNDLE", TEST_CA);
    });
    assert!(fs::read(m.join("dir/large")).unwrap() == large, "{}", m.log());
    assert!(fs::read(m.join("dir/small")).unwrap() == small);
}

/// Hugging Face over https: the gateway answers GETs with redirects to a CDN, another https
/// endpoint, whose answers are fetched without credentials on connections of their own.
#[test]
fn hugging_face_reads_follow_redirects_to_an_https_cdn() {
    let _turn = common::shared();
    let s = tls_server();
    s.backend().create_bucket("ns");
    s.quirks().emulate_hugging_face();
    let model = pattern(6 << 20, 41);
    s.backend().put_object("ns", "model.bin", model.clone(), &[]).unwrap();
    let m = Mount::source(&s, "hf://org/ns", &s.endpoint.clone(), &["--ca-bundle", TEST_CA]);
    assert!(fs::read(m.join("model.bin")).unwrap() == model, "{}", m.log());
    let mut middle = vec![0; 1000];
    fs::File::open(m.join("model.bin"))
        .unwrap()
        .read_exact_at(&mut middle, 3_000_000)
        .unwrap();
    assert!(middle == model[3_000_000..3_001_000]);
    assert!(s.stats().count("RedirectGet") > 0, "{:?}", s.stats().snapshot());
}
