//! Shared test harness: an in-process S3 server and real FUSE mounts of it, each mount
//! undone by a Drop guard (also when the test panics), and the turns tests take.
#![allow(dead_code)]

pub mod moto;

use s3vol::server::{RunningServer, ServerConfig, start_blocking};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Every test of this binary starts with a turn: [`shared`] or [`alone`].
static TURNS: RwLock<()> = RwLock::new(());

thread_local! {
    /// Whether this thread's test holds its turn.
    static IN_TURN: Cell<bool> = const { Cell::new(false) };
}

/// A test's turn, held until dropped (bind it: `let _turn = shared();`).
pub struct Turn {
    _guard: Guard,
}

enum Guard {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

impl Drop for Turn {
    fn drop(&mut self) {
        IN_TURN.with(|t| t.set(false));
    }
}

/// A turn beside any other `shared` test (the test threads run them two or more at a time,
/// as cargo ran the tests of one crate).
pub fn shared() -> Turn {
    take_turn(|| Guard::Shared(TURNS.read().unwrap_or_else(PoisonError::into_inner)))
}

/// A turn with no other test running in this process. For tests that would disturb others
/// or be disturbed by them: a SIGKILL of the daemon while a file is open on its mount (any
/// other test's fork+exec closes the descriptors its child inherited, which sends FLUSH
/// and uploads early), process-wide state (umask, resource limits, the kernel's caches),
/// heavy load, and measurements of memory, CPU or request counts within a metadata TTL.
pub fn alone() -> Turn {
    take_turn(|| Guard::Alone(TURNS.write().unwrap_or_else(PoisonError::into_inner)))
}

fn take_turn(take: impl FnOnce() -> Guard) -> Turn {
    // A second turn on one thread would deadlock as soon as an `alone` test waits.
    assert!(
        !IN_TURN.with(Cell::get),
        "this test already holds its turn: take `shared()` or `alone()` once, at its start"
    );
    let guard = take();
    IN_TURN.with(|t| t.set(true));
    Turn { _guard: guard }
}

/// Panics unless the calling test holds its turn: a test that forgot it would overlap the
/// tests that must run alone.
#[track_caller]
pub fn assert_in_turn() {
    assert!(
        IN_TURN.with(Cell::get),
        "start the test with `let _turn = common::shared();` (or `common::alone()`): every \
         test of this binary takes a turn"
    );
}

pub const BUCKET: &str = "test";

/// A fresh server with an empty bucket `test`; parts of any size are accepted so tests
/// can use small part sizes.
pub fn server() -> RunningServer {
    assert_in_turn();
    let server = start_blocking(ServerConfig {
        min_part_size: 0,
        ..ServerConfig::default()
    });
    server.backend().create_bucket(BUCKET);
    server
}

/// As [`server`], its S3 endpoint over https with a certificate of the test CA
/// ([`TEST_CA`], `tests/it/tls/`).
pub fn tls_server() -> RunningServer {
    assert_in_turn();
    let server = start_blocking(ServerConfig {
        min_part_size: 0,
        tls: Some(s3vol::server::TlsIdentity {
            cert_chain_pem: include_bytes!("../tls/server.pem").to_vec(),
            key_pem: include_bytes!("../tls/server.key").to_vec(),
        }),
        ..ServerConfig::default()
    });
    server.backend().create_bucket(BUCKET);
    server
}

/// The CA that signed [`tls_server`]'s certificate, for `--ca-bundle`.
pub const TEST_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tls/ca.pem");

pub fn put(server: &RunningServer, key: &str, body: impl Into<bytes::Bytes>) {
    server
        .backend()
        .put_object(BUCKET, key, body, &[])
        .expect("bucket exists");
}

pub fn object(server: &RunningServer, key: &str) -> Option<Vec<u8>> {
    server.backend().get_object(BUCKET, key).map(|o| o.body.to_vec())
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `s3vol mount -f` of a source on the server, in a child process; unmounted on drop.
pub struct Mount {
    pub path: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts `s3://test` (path style) with `extra` options.
    pub fn new(server: &RunningServer, extra: &[&str]) -> Mount {
        Mount::source(server, &format!("s3://{BUCKET}"), &server.endpoint, extra)
    }

    /// As [`Mount::new`], with `--cache-dir cache` before `extra`.
    pub fn with_cache(server: &RunningServer, cache: &Path, extra: &[&str]) -> Mount {
        let mut args = vec!["--cache-dir", cache.to_str().expect("utf-8 path")];
        args.extend(extra);
        Mount::new(server, &args)
    }

    pub fn source(server: &RunningServer, source: &str, endpoint: &str, extra: &[&str]) -> Mount {
        Mount::with_keys((&server.access_key, &server.secret_key), source, endpoint, extra)
    }

    /// Mounts `s3://BUCKET` of a moto server (path style; moto accepts any credentials)
    /// with `extra` options.
    pub fn moto(moto: &moto::Moto, bucket: &str, extra: &[&str]) -> Mount {
        Mount::with_keys(("testing", "testing"), &format!("s3://{bucket}"), &moto.endpoint, extra)
    }

    /// Mounts `source` at `endpoint` with the credentials `(access key, secret key)`.
    pub fn with_keys(keys: (&str, &str), source: &str, endpoint: &str, extra: &[&str]) -> Mount {
        Mount::with_env(source, endpoint, extra, |cmd| {
            cmd.env("AWS_ACCESS_KEY_ID", keys.0)
                .env("AWS_SECRET_ACCESS_KEY", keys.1);
        })
    }

    /// As [`Mount::new`], with the daemon's stderr going to `stderr` instead of the log file
    /// (which then stays empty).
    pub fn with_stderr(server: &RunningServer, extra: &[&str], stderr: Stdio) -> Mount {
        Mount::with_env(&format!("s3://{BUCKET}"), &server.endpoint, extra, |cmd| {
            cmd.env("AWS_ACCESS_KEY_ID", &server.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
                .stderr(stderr);
        })
    }

    /// Mounts `source` at `endpoint`; `credentials` puts them in the daemon's environment
    /// (and may redirect its stderr).
    pub fn with_env(source: &str, endpoint: &str, extra: &[&str], credentials: impl FnOnce(&mut Command)) -> Mount {
        assert_in_turn();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let log = dir.path().join("s3vol.log");
        let cache = dir.path().join("cache");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3vol"));
        cmd.arg("mount")
            .arg(source)
            .arg(&path)
            .args([
                "-f",
                "--endpoint-url",
                endpoint,
                "--force-path-style",
                "--region",
                "us-east-1",
            ])
            .args(["--retries", "3"])
            .args(extra)
            .env_remove("AWS_PROFILE")
            .env("RUST_LOG", "s3vol=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        credentials(&mut cmd);
        if !extra.contains(&"--cache-dir") {
            cmd.arg("--cache-dir").arg(&cache);
        }
        // A short TTL so tests see remote changes quickly, unless a test sets its own.
        if !extra.contains(&"--metadata-ttl") {
            cmd.args(["--metadata-ttl", "1"]);
        }
        let child = cmd.spawn().expect("start s3vol");
        let mut mount = Mount {
            path,
            child: Some(child),
            log,
            _dir: dir,
        };
        mount.wait_until_mounted();
        mount
    }

    fn wait_until_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.path) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("s3vol exited with {status} before mounting:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mount did not come up in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// `s3vol sync MOUNTPOINT`: returns once everything written is in the bucket (the
    /// default upload mode uploads after close()); panics if it fails.
    pub fn sync(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .arg("sync")
            .arg(&self.path)
            .output()
            .expect("run s3vol sync");
        assert!(
            out.status.success(),
            "s3vol sync failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// This mount's entry of `s3vol status MOUNTPOINT --json`; panics if the command fails.
    pub fn status(&self) -> serde_json::Value {
        let ran = run_s3vol(
            &["status", self.path.to_str().expect("utf-8 path"), "--json"],
            Duration::from_secs(30),
        );
        assert_eq!(ran.code, Some(0), "s3vol status --json:\n{}", ran.text());
        let all: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", ran.text()));
        match all {
            serde_json::Value::Array(mut mounts) if mounts.len() == 1 => mounts.remove(0),
            serde_json::Value::Object(_) => all,
            other => panic!("status --json of one mount: {other}"),
        }
    }

    /// A number of [`Mount::status`].
    pub fn status_count(&self, field: &str) -> u64 {
        let st = self.status();
        st.get(field)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("status --json has no {field}: {st}"))
    }

    /// Unmounts and waits for the daemon to exit; returns its log.
    pub fn unmount(mut self) -> String {
        self.stop();
        self.log()
    }

    fn stop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.path).status();
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).status();
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and clears the dead mount.
    pub fn kill(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).status();
        self.log()
    }

    /// Waits up to `bound` for the daemon to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- s3vol log ---\n{}", self.log());
        }
        // Lazy unmount first: a panicking test may hold files open.
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).status();
        }
        self.stop();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(wanted.as_str()))
}

/// Every path under `root`, relative, directories with a trailing `/`.
pub fn walk(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let entry = entry.expect("entry");
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .to_string();
            if entry.file_type().expect("type").is_dir() {
                out.insert(format!("{rel}/"));
                stack.push(entry.path());
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

/// Writes a `--credentials-file` (0600) for `keys`, replacing the file by a rename as
/// rotation tools do.
pub fn write_credentials_file(path: &Path, keys: &s3vol::server::KeyPair) {
    use std::os::unix::fs::PermissionsExt;
    let mut text = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
        keys.access_key, keys.secret_key
    );
    if let Some(token) = &keys.session_token {
        text += &format!("aws_session_token = {token}\n");
    }
    let next = path.with_extension("new");
    std::fs::write(&next, text).expect("write the credentials file");
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    std::fs::rename(&next, path).expect("replace the credentials file");
}

/// Runs `f` in a thread and waits at most `bound` for it: a call that hangs fails the test
/// instead of hanging it.
pub fn within<T: Send + 'static>(what: &str, bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(bound)
        .unwrap_or_else(|_| panic!("{what} did not return within {bound:?}: it hangs"))
}

/// close(2) with its result (dropping a `File` ignores it).
pub fn close(file: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` came from `file`, which gave up ownership; it is closed exactly once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Polls `cond` every 20 ms for at most `bound`; whether it became true.
pub fn eventually(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Disarms any pending injected failure.
pub fn stop_injecting(s: &RunningServer) {
    s.quirks().inject_errors(
        0,
        s3vol::server::InjectedFailure::BadGateway,
        s3vol::server::RequestFilter::Any,
    );
}

/// The peak resident set (VmHWM) of process `pid`, in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon alive");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number");
    kib / 1024
}

/// `s3vol` with the server's keys in its environment (and no AWS profile).
pub fn s3vol_command(server: &RunningServer) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3vol"));
    cmd.env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
        .env_remove("AWS_PROFILE");
    cmd
}

/// A command's stdout, then its stderr.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Output of one `s3vol` command run by [`run_s3vol`].
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn text(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `s3vol ARGS`, bounded by `bound`: killed, and a panic, beyond it.
pub fn run_s3vol(args: &[&str], bound: Duration) -> Ran {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start s3vol");
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for s3vol") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`s3vol {}` did not return within {bound:?}: it hangs\n{}",
                args.join(" "),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}
