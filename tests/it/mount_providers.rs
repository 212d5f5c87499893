//! Provider quirks through a real mount: Hugging Face (302 redirects, no checksums, no
//! markers, no user metadata, forbidden names) and Runpod (hidden upload folder,
//! repeated continuation token, PutObject cap, no UploadPartCopy / DeleteObjects), and
//! credentials that change under a live mount (a rotated `--credentials-file`, an SSO
//! profile).

use crate::common;

use common::{BUCKET, Mount, object, pattern, put, server, walk, write_credentials_file};
use s3vol::server::{KeyPair, ServerConfig, start_blocking};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::process::Command;
use std::sync::{Arc, Mutex};

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
    let _turn = common::shared();
    let (s, m) = hf_mount(&[]);
    assert!(fs::read(m.join("model.bin")).unwrap() == pattern(5 << 20, 9));
    assert!(s.stats().count("RedirectGet") > 0, "{:?}", s.stats().snapshot());
    // A ranged read in the middle goes through the CDN too.
    let f = fs::File::open(m.join("model.bin")).unwrap();
    let mut buf = vec![0u8; 1000];
    f.read_exact_at(&mut buf, 3_000_000).unwrap();
    assert!(buf == pattern(5 << 20, 9)[3_000_000..3_001_000]);

    fs::write(m.join("cfg/new.txt"), "written").unwrap();
    m.sync();
    let stored = s.backend().get_object("ns", "cfg/new.txt").expect("uploaded");
    assert_eq!(stored.body.to_vec(), b"written");
    assert!(stored.metadata.is_empty(), "HF keeps no user metadata");
}

#[test]
fn hugging_face_directories_live_in_the_mount_until_a_file_is_written() {
    let _turn = common::shared();
    let (s, m) = hf_mount(&[]);
    fs::create_dir(m.join("empty")).unwrap();
    assert!(m.join("empty").is_dir());
    assert!(
        s.backend().keys("ns").iter().all(|k| !k.ends_with('/')),
        "no marker objects on HF"
    );
    fs::create_dir(m.join("later")).unwrap();
    fs::write(m.join("later/file"), "x").unwrap();
    m.sync();
    assert_eq!(
        s.backend().get_object("ns", "later/file").map(|o| o.body.to_vec()),
        Some(b"x".to_vec())
    );
    fs::remove_dir(m.join("empty")).unwrap();
    assert!(!m.join("empty").exists());
}

#[test]
fn hugging_face_forbidden_names_are_einval() {
    let _turn = common::shared();
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
    let _turn = common::shared();
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
    let _turn = common::alone();
    let (s, m) = runpod(&["--max-put-size", "1MiB", "--part-size", "1MiB"]);
    s.quirks().set_max_put_size(Some(1 << 20));
    let data = pattern(3 << 20, 11);
    let mut f = fs::File::create(m.join("ckpt.bin")).unwrap();
    f.write_all(&data).unwrap();
    drop(f);
    m.sync();
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
    m.sync();
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
    let _turn = common::shared();
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
    m.sync();
    assert_eq!(object(&s, "g").as_deref(), Some(&b"after throttling"[..]));
}

// ---------------------------------------------------------------- credentials

fn keys(access: &str, secret: &str, token: Option<&str>) -> KeyPair {
    KeyPair {
        access_key: access.into(),
        secret_key: secret.into(),
        session_token: token.map(str::to_string),
    }
}

/// The server accepts only the current key; each rotation replaces it there first (the
/// old one stops working at once, as an expired token does), then in the file. The same
/// mount keeps reading data it never read before and writing, with no remount: a new
/// key and token (file replaced by a rename), then a new secret for the same key and no
/// token (file rewritten in place, s3fs format).
#[test]
fn a_credentials_file_rotated_under_a_live_mount_keeps_it_working() {
    let _turn = common::shared();
    let s = server();
    let first = keys("ASIA-ONE", "secret-one", Some("token-one"));
    s.keys().rotate(first.clone());
    for n in 1..=3 {
        put(&s, &format!("data{n}"), pattern(300_000, n));
    }
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("vol.cred");
    write_credentials_file(&cred, &first);
    let m = Mount::new(&s, &["--credentials-file", cred.to_str().unwrap()]);
    assert!(fs::read(m.join("data1")).unwrap() == pattern(300_000, 1));
    fs::write(m.join("written1"), "one").unwrap();
    m.sync();
    assert_eq!(object(&s, "written1").as_deref(), Some(&b"one"[..]));

    let second = keys("ASIA-TWO", "secret-two", Some("token-two"));
    s.keys().rotate(second.clone());
    write_credentials_file(&cred, &second);
    assert!(
        fs::read(m.join("data2")).unwrap() == pattern(300_000, 2),
        "uncached read after rotation"
    );
    fs::write(m.join("written2"), "two").unwrap();
    m.sync();
    assert_eq!(object(&s, "written2").as_deref(), Some(&b"two"[..]));

    s.keys().rotate(keys("ASIA-TWO", "secret-three", None));
    fs::write(&cred, "ASIA-TWO:secret-three\n").unwrap();
    assert!(
        fs::read(m.join("data3")).unwrap() == pattern(300_000, 3),
        "uncached read after rotation"
    );
    fs::write(m.join("written3"), "three").unwrap();
    m.sync();
    assert_eq!(object(&s, "written3").as_deref(), Some(&b"three"[..]));

    let log = m.unmount();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("read new credentials"), "{log}");
}

/// The SSO portal's GetRoleCredentials (`GET /federation/credentials`) on 127.0.0.1:
/// answers a request carrying `token` with `role` and records each request line.
struct SsoPortal {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl SsoPortal {
    fn start(token: &str, role: &KeyPair) -> SsoPortal {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let expiration_ms = (std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let credentials = format!(
            r#"{{"roleCredentials":{{"accessKeyId":"{}","secretAccessKey":"{}","sessionToken":"{}","expiration":{expiration_ms}}}}}"#,
            role.access_key,
            role.secret_key,
            role.session_token.as_deref().unwrap_or_default()
        );
        let bearer = format!("x-amz-sso_bearer_token: {token}");
        // Detached: it serves until the test process ends, and only on 127.0.0.1.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    head.push(line.trim_end().to_string());
                    line.clear();
                }
                let authorised = head.iter().any(|h| h.eq_ignore_ascii_case(&bearer));
                seen.lock().unwrap().push(head.first().cloned().unwrap_or_default());
                let (status, error_type, body) = if authorised && head[0].starts_with("GET /federation/credentials?") {
                    ("200 OK", "", credentials.as_str())
                } else {
                    (
                        "401 Unauthorized",
                        "x-amzn-ErrorType: UnauthorizedException\r\n",
                        r#"{"message":"Session token not found or invalid"}"#,
                    )
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\n{error_type}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = (&stream).write_all(response.as_bytes());
            }
        });
        SsoPortal { url, requests }
    }
}

/// `--profile` naming an SSO profile, as `aws sso login` leaves it: the profile in
/// ~/.aws/config, the portal's access token in ~/.aws/sso/cache. The mount gets role
/// credentials from the portal (on 127.0.0.1 through AWS_ENDPOINT_URL_SSO) and uses
/// them: the server accepts nothing else.
#[test]
fn an_sso_profile_mounts_with_the_role_credentials_of_the_portal() {
    let _turn = common::shared();
    let s = server();
    let role = keys("ASIA-SSO-ROLE", "sso-role-secret", Some("sso-role-session"));
    s.keys().rotate(role.clone());
    put(&s, "from-sso", "hello");
    let portal = SsoPortal::start("portal-access-token", &role);

    let home = tempfile::tempdir().unwrap();
    let start_url = "https://s3vol-test.awsapps.com/start";
    fs::create_dir_all(home.path().join(".aws/sso/cache")).unwrap();
    fs::write(
        home.path().join(".aws/config"),
        format!(
            "[profile work]\nsso_start_url = {start_url}\nsso_region = us-east-1\n\
             sso_account_id = 123456789012\nsso_role_name = S3Access\nregion = us-east-1\n"
        ),
    )
    .unwrap();
    let cache_file = home.path().join(format!(".aws/sso/cache/{}.json", sha1_hex(start_url)));
    fs::write(
        &cache_file,
        format!(
            r#"{{"startUrl":"{start_url}","region":"us-east-1","accessToken":"portal-access-token","expiresAt":"2099-01-01T00:00:00Z"}}"#
        ),
    )
    .unwrap();
    fs::set_permissions(&cache_file, fs::Permissions::from_mode(0o600)).unwrap();

    let sso_environment = |cmd: &mut Command| {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", home.path())
            .env("AWS_CONFIG_FILE", home.path().join(".aws/config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.path().join(".aws/credentials"))
            .env("AWS_ENDPOINT_URL_SSO", &portal.url);
    };
    let source = format!("s3://{BUCKET}");
    let m = Mount::with_env(&source, &s.endpoint, &["--profile", "work"], sso_environment);
    assert_eq!(fs::read(m.join("from-sso")).unwrap(), b"hello");
    fs::write(m.join("to-sso"), "written").unwrap();
    m.sync();
    assert_eq!(object(&s, "to-sso").as_deref(), Some(&b"written"[..]));
    let log = m.unmount();
    assert!(!log.contains("panicked"), "{log}");
    let requests = portal.requests.lock().unwrap().clone();
    assert!(!requests.is_empty(), "the portal was asked");
    assert!(
        requests
            .iter()
            .all(|r| r.contains("role_name=S3Access") && r.contains("account_id=123456789012")),
        "{requests:?}"
    );

    // A login the portal no longer honours: the error says to log in again.
    let stale = fs::read_to_string(&cache_file)
        .unwrap()
        .replace("portal-access-token", "stale-token");
    fs::write(&cache_file, stale).unwrap();
    let mut check = Command::new(env!("CARGO_BIN_EXE_s3vol"));
    check
        .args(["check", &source, "--endpoint-url", &s.endpoint, "--force-path-style"])
        .args(["--profile", "work", "--retries", "1"]);
    sso_environment(&mut check);
    let out = check.output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("credentials expired") && text.contains("aws sso login --profile work"),
        "{text}"
    );
}

/// The name aws-config gives the cached token of a start URL.
fn sha1_hex(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    fs::write(&input, text).unwrap();
    let out = Command::new("sha1sum").arg(&input).output().expect("sha1sum");
    let hex = String::from_utf8(out.stdout).unwrap();
    hex.split_whitespace().next().expect("a digest").to_string()
}
