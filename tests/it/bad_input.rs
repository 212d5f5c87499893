//! Bad input: each case fails with one clear message (or the right errno), in bounded
//! time, and loses nothing. Cases already covered elsewhere are not repeated here:
//! cli.rs (malformed sources for `check`, missing bucket, unreachable endpoint,
//! wrong credentials for `check`, non-empty and missing mountpoints), mount_write.rs
//! (a 256-byte file name, ENOSPC at fsync), mount_providers.rs (HF names at create).

use crate::common;

use common::{BUCKET, Mount, is_mounted, object, pattern, put, server, walk, write_credentials_file};
use s3vol::server::{KeyPair, RunningServer, ServerConfig, start_blocking};
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// The longest a refused command may take: a few quick retries at most.
const BOUND: Duration = Duration::from_secs(60);

fn s3vol(s: &RunningServer) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3vol"));
    cmd.env("AWS_ACCESS_KEY_ID", &s.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s.secret_key)
        .env_remove("AWS_PROFILE");
    cmd
}

/// Runs `cmd` to its end, killing it (by its pid) if it takes longer than [`BOUND`].
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BOUND) {
        Ok(output) => output.expect("wait for the command"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{cmd:?} did not finish within {BOUND:?}");
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The command failed with `code`, said so in one `s3vol:` line containing `wanted`, and
/// returns that line.
#[track_caller]
fn assert_refused(o: &Output, code: i32, wanted: &[&str], what: &str) -> String {
    let out = text(o);
    assert_eq!(o.status.code(), Some(code), "{what}: exit status; output:\n{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("s3vol:")).collect();
    assert_eq!(lines.len(), 1, "{what}: one error line expected in:\n{out}");
    for w in wanted {
        assert!(lines[0].contains(w), "{what}: expected {w:?} in {:?}", lines[0]);
    }
    lines[0].to_string()
}

/// An error about a server that is not (a working) S3 names the endpoint (`check` prints
/// it on its own line first) and speaks of the answer, not of the SDK's internals.
#[track_caller]
fn assert_names_the_endpoint(o: &Output, endpoint: &str, what: &str) -> String {
    let line = assert_refused(o, 1, &[], what);
    assert!(
        text(o).contains(endpoint),
        "{what}: the endpoint {endpoint} is named in:\n{}",
        text(o)
    );
    for internal in ["bug in the SDK", "StartEl", "com.amazonaws"] {
        assert!(
            !line.contains(internal),
            "{what}: SDK internals ({internal:?}) in {line:?}"
        );
    }
    line
}

/// An empty mountpoint; a mount that should have been refused but was made is undone.
struct Mountpoint {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mountpoint {
    fn new() -> Mountpoint {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mnt");
        fs::create_dir(&path).expect("mountpoint");
        Mountpoint { path, _dir: dir }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    #[track_caller]
    fn assert_untouched(&self) {
        assert!(
            !is_mounted(&self.path),
            "nothing may be mounted on {}",
            self.path.display()
        );
        assert_eq!(
            fs::read_dir(&self.path).map(|d| d.count()).ok(),
            Some(0),
            "the mountpoint stays empty"
        );
    }
}

impl Drop for Mountpoint {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).status();
        }
    }
}

/// `s3vol mount SOURCE MOUNTPOINT` (in the background, as users run it) against `endpoint`.
fn mount_command(s: &RunningServer, source: &str, mp: &Mountpoint, endpoint: &str, extra: &[&str]) -> Command {
    let mut cmd = s3vol(s);
    cmd.args([
        "mount",
        source,
        mp.arg(),
        "--endpoint-url",
        endpoint,
        "--force-path-style",
    ])
    .args(["--retries", "2", "--connect-timeout", "2", "--read-timeout", "2"])
    .args(extra);
    cmd
}

fn check_command(s: &RunningServer, endpoint: &str) -> Command {
    let mut cmd = s3vol(s);
    cmd.args([
        "check",
        "s3://test",
        "--endpoint-url",
        endpoint,
        "--force-path-style",
        "--retries",
        "2",
    ]);
    cmd
}

/// A plain HTTP server on 127.0.0.1 that answers every request with `status`,
/// `content_type` and `body`: a web server where an S3 endpoint was expected, or a
/// broken S3 gateway. Stops when dropped.
struct FakeEndpoint {
    url: String,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl FakeEndpoint {
    fn start(status: &str, content_type: &str, body: &str) -> FakeEndpoint {
        let response = http_response(status, content_type, body);
        FakeEndpoint::answering(move |_| response.clone())
    }

    /// Answers each request with `answer(its request line)`.
    fn answering(answer: impl Fn(&str) -> String + Send + 'static) -> FakeEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(head) = read_request_head(&mut stream) else {
                    continue;
                };
                let line = head.lines().next().unwrap_or_default().to_string();
                let _ = stream.write_all(answer(&line).as_bytes());
            }
        });
        FakeEndpoint {
            url: format!("http://{addr}"),
            stop,
            addr,
        }
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads up to the blank line that ends an HTTP request head (bodies are not read).
fn read_request_head(stream: &mut impl Read) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn malformed_sources_are_refused_by_mount_before_any_request() {
    let _turn = common::shared();
    let s = server();
    let cases = [
        ("bucket-without-scheme", "no scheme"),
        ("gs://bucket", "unknown scheme"),
        ("s3://bucket/a//b", "empty, '.' or '..' segment"),
        ("s3://bucket/../up", "empty, '.' or '..' segment"),
        ("s3://bu cket", "whitespace"),
        ("runpod://EU-RO-1/", "empty volume id"),
        ("hf:///bucket", "empty namespace"),
    ];
    for (source, message) in cases {
        let mp = Mountpoint::new();
        let o = run(mount_command(&s, source, &mp, &s.endpoint, &[]));
        assert_refused(&o, 1, &["invalid source", message], source);
        mp.assert_untouched();
    }
    assert_eq!(
        s.stats().total(),
        0,
        "refused before any request: {:?}",
        s.stats().snapshot()
    );
}

#[test]
fn unknown_options_are_usage_errors_naming_the_option() {
    let _turn = common::shared();
    let s = server();
    let mp = Mountpoint::new();
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-option"], "--no-such-option"),
        (&["-o", "region=us-east-1,no_such_flag"], "--no_such_flag"),
        (&["--markers", "sometimes"], "sometimes"),
        (&["--memory-limit", "lots"], "lots"),
        // Values with no meaning: refused, naming the option, never a panic or a hang.
        (&["--metadata-ttl", "-1"], "--metadata-ttl"),
        (&["--metadata-ttl", "NaN"], "--metadata-ttl"),
        (&["-o", "metadata-ttl=soon"], "--metadata-ttl"),
        (&["--part-size", "0"], "--part-size"),
        (&["--min-part-size", "0"], "--min-part-size"),
        (&["--max-part-size", "0"], "--max-part-size"),
        (&["--max-put-size", "0"], "--max-put-size"),
        (&["--max-parts", "0"], "--max-parts"),
        (&["--max-requests", "0"], "--max-requests"),
        (&["--retries", "0"], "--retries"),
        (&["--connect-timeout", "0"], "--connect-timeout"),
        (&["--read-timeout", "0"], "--read-timeout"),
        (&["--fuse-threads", "0"], "--fuse-threads"),
        (&["--memory-limit", "0"], "--memory-limit"),
    ];
    for &(extra, named) in cases {
        let o = run(mount_command(&s, "s3://test", &mp, &s.endpoint, extra));
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: a usage error exits 2:\n{out}");
        assert!(out.contains(named), "{extra:?}: the message names {named:?}:\n{out}");
        mp.assert_untouched();
    }
    assert_eq!(s.stats().total(), 0, "refused before any request");
}

#[test]
fn wrong_credentials_are_refused_by_mount() {
    let _turn = common::shared();
    let s = server();
    put(&s, "kept", "kept");
    for (key, secret) in [
        (s.access_key.as_str(), "wrong-secret"),
        ("no-such-key", s.secret_key.as_str()),
    ] {
        let mp = Mountpoint::new();
        let mut cmd = mount_command(&s, "s3://test", &mp, &s.endpoint, &[]);
        cmd.env("AWS_ACCESS_KEY_ID", key).env("AWS_SECRET_ACCESS_KEY", secret);
        let o = run(cmd);
        assert_refused(&o, 1, &["access denied"], &format!("key {key}, secret {secret}"));
        mp.assert_untouched();
    }
    assert_eq!(object(&s, "kept").as_deref(), Some(&b"kept"[..]));
}

/// No credentials anywhere: one line that says what to set, at once (not ten retries of
/// the SDK's credential chain).
#[test]
fn missing_credentials_are_named_without_retries() {
    let _turn = common::shared();
    let s = server();
    let home = tempfile::tempdir().unwrap();
    let mp = Mountpoint::new();
    let mut cmd = mount_command(&s, "s3://test", &mp, &s.endpoint, &[]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let o = run(cmd);
    assert_refused(
        &o,
        1,
        &["no credentials found", "AWS_ACCESS_KEY_ID", "--credentials-file"],
        "no credentials",
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("attempts"), "not retried: {stderr}");
    mp.assert_untouched();
    assert_eq!(s.stats().total(), 0, "nothing reached the server");
}

#[test]
fn a_clock_two_hours_off_is_named_as_the_cause() {
    let _turn = common::shared();
    let probe = Command::new("faketime").arg("--version").output();
    assert!(
        probe.is_ok(),
        "faketime is required for this test (apt-get install faketime)"
    );
    let s = server();
    let mp = Mountpoint::new();
    let check = check_command(&s, &s.endpoint);
    let mount = mount_command(&s, "s3://test", &mp, &s.endpoint, &[]);
    for (what, inner) in [("check", check), ("mount", mount)] {
        // libfaketime (Debian package `faketime`) shifts the clock of the s3vol process only.
        let mut cmd = Command::new("faketime");
        cmd.args(["-f", "-2h"]).arg(inner.get_program()).args(inner.get_args());
        cmd.envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
        cmd.env_remove("AWS_PROFILE");
        assert_refused(&run(cmd), 1, &["clock"], what);
    }
    mp.assert_untouched();
}

#[test]
fn an_endpoint_that_is_not_s3_is_a_clear_error() {
    let _turn = common::shared();
    let s = server();
    let html = "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head>\
                <body><h1>Welcome to nginx!</h1></body></html>";
    for status in ["200 OK", "404 Not Found"] {
        let web = FakeEndpoint::start(status, "text/html", html);
        let mp = Mountpoint::new();
        let check = run(check_command(&s, &web.url));
        let mount = run(mount_command(&s, "s3://test", &mp, &web.url, &[]));
        for (what, o) in [("check", check), ("mount", mount)] {
            let what = format!("{what} of a web server answering {status}");
            let line = assert_names_the_endpoint(&o, &web.url, &what);
            // Not "not found" or an XML parser's complaint: the answer was a web page.
            assert!(
                line.contains("not an S3") || line.contains("HTML"),
                "{what}: say the answer was not S3: {line:?}"
            );
        }
        mp.assert_untouched();
    }
}

#[test]
fn a_server_answering_malformed_xml_is_a_clear_error() {
    let _turn = common::shared();
    let s = server();
    let garbage = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Contents><Key>a</Key><Size>x";
    let broken = FakeEndpoint::start("200 OK", "application/xml", garbage);
    let mp = Mountpoint::new();
    let check = run(check_command(&s, &broken.url));
    let mount = run(mount_command(&s, "s3://test", &mp, &broken.url, &[]));
    for (what, o) in [("check", check), ("mount", mount)] {
        let line = assert_names_the_endpoint(&o, &broken.url, &format!("{what} against malformed XML"));
        assert!(
            line.contains("XML"),
            "{what}: say the answer was malformed XML: {line:?}"
        );
    }
    mp.assert_untouched();
}

#[test]
fn a_mountpoint_that_is_a_file_is_refused_and_left_alone() {
    let _turn = common::shared();
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, "precious").unwrap();
    let mut cmd = s3vol(&s);
    cmd.args([
        "mount",
        "s3://test",
        file.to_str().unwrap(),
        "--endpoint-url",
        &s.endpoint,
        "--force-path-style",
    ]);
    assert_refused(&run(cmd), 1, &["not a directory"], "mount on a file");
    assert_eq!(fs::read(&file).unwrap(), b"precious");
    assert!(!is_mounted(&file));
}

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
    assert_eq!(count_files(&cache.join("journal")), 0, "journal emptied");
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

/// A server that answers every listing with an empty page and a fresh continuation token
/// would keep `ls` going forever: the listing ends with EIO after a bounded number of pages.
#[test]
fn endless_empty_listing_pages_end_in_an_error() {
    let _turn = common::shared();
    let pages = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = pages.clone();
    let fake = FakeEndpoint::answering(move |line| {
        if line.starts_with("HEAD") {
            return http_response("404 Not Found", "application/xml", "");
        }
        let n = counted.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>b</Name><Prefix></Prefix>\
             <KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>\
             <NextContinuationToken>token-{n}</NextContinuationToken></ListBucketResult>"
        );
        http_response("200 OK", "application/xml", &body)
    });
    let m = Mount::with_keys(("k", "s"), "s3://b", &fake.url, &["--metadata-ttl", "0"]);
    let mut ls = Command::new("ls");
    ls.arg("-f").arg(&m.path);
    let o = run(ls);
    assert!(!o.status.success(), "ls must fail, not list forever");
    assert!(text(&o).contains("Input/output error"), "{}", text(&o));
    let sent = pages.load(Ordering::Relaxed);
    assert!(sent < 500, "{sent} listing requests for one ls");
    assert!(m.unmount().contains("empty pages in a row"));
}
