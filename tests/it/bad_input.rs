//! Bad input: each case fails with one clear message (or the right errno), in bounded
//! time, and loses nothing. Cases already covered elsewhere are not repeated here:
//! cli.rs (malformed sources for `check`, missing bucket, unreachable endpoint,
//! wrong credentials for `check`, non-empty and missing mountpoints), mount_write.rs
//! (a 256-byte file name, ENOSPC at fsync), mount_providers.rs (HF names at create).

use crate::common;

use common::{Mount, is_mounted, object, put, s3vol_command, server, text};
use s3vol::server::RunningServer;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

mod mount;

/// The longest a refused command may take: a few quick retries at most.
const BOUND: Duration = Duration::from_secs(60);

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
    let mut cmd = s3vol_command(s);
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
    let mut cmd = s3vol_command(s);
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
    let mut cmd = s3vol_command(&s);
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

/// An https endpoint whose certificate no trusted CA signed (a private CA's server, no
/// `--ca-bundle`): refused at once, the certificate named as the cause, and the way out.
#[test]
fn an_https_endpoint_with_an_untrusted_certificate_is_refused_naming_the_certificate() {
    let _turn = common::shared();
    let s = common::tls_server();
    put(&s, "kept", "kept");
    let mp = Mountpoint::new();
    let check = run(check_command(&s, &s.endpoint));
    let mount = run(mount_command(&s, "s3://test", &mp, &s.endpoint, &[]));
    for (what, o) in [("check", check), ("mount", mount)] {
        let line = assert_names_the_endpoint(&o, &s.endpoint, what);
        assert!(line.contains("certificate"), "{what}: name the certificate: {line:?}");
        assert!(line.contains("--ca-bundle"), "{what}: say how to trust it: {line:?}");
    }
    mp.assert_untouched();
    assert_eq!(object(&s, "kept").as_deref(), Some(&b"kept"[..]));
}

/// `--ca-bundle` naming a file that holds no certificate (a key, a typo'd path): refused
/// before any request, the file named.
#[test]
fn a_ca_bundle_without_a_certificate_is_refused_naming_the_file() {
    let _turn = common::shared();
    let s = common::tls_server();
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tls/server.key");
    for (bundle, wanted) in [(key, "no certificate"), ("/nonexistent/ca.pem", "No such file")] {
        let mp = Mountpoint::new();
        let o = run(mount_command(
            &s,
            "s3://test",
            &mp,
            &s.endpoint,
            &["--ca-bundle", bundle],
        ));
        assert_refused(&o, 1, &["CA bundle", bundle, wanted], bundle);
        mp.assert_untouched();
    }
    assert_eq!(s.stats().snapshot().values().sum::<u64>(), 0, "no request sent");
}
