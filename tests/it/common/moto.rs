//! moto server (<https://github.com/getmoto/moto>), a second S3 implementation independent
//! of the embedded server, run as a child process on 127.0.0.1.
//!
//! moto must be installed (`pip install "moto[server]"`; `tests/setup` does it). When it is
//! missing, [`Moto::start`] panics with that instruction: tests that need moto fail, never
//! skip silently.
//!
//! The child runs moto's own `ThreadedMotoServer` (the WSGI app `python3 -m moto.server`
//! serves) on port 0, so the OS picks a free port with no race, and reports the port on
//! stdout. It is killed by PID on drop; as a safety net it also exits when its stdin
//! closes, so a test process that dies without unwinding does not leave it behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long moto may take to start (about 1 s on an idle machine; CI machines are busier).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Install instruction included in every failure to start moto.
pub const INSTALL_HINT: &str =
    "moto server is required for this test: pip install \"moto[server]\" (tests/setup installs it)";

/// The oldest moto these tests accept: 5.2.0 and 5.2.1 answer CompleteMultipartUpload with
/// the root element `CompleteMultipartUploadResponse` instead of
/// `CompleteMultipartUploadResult`, which aws-sdk-s3 cannot parse (getmoto/moto#10055).
pub const MIN_VERSION: [u32; 3] = [5, 2, 2];

/// The Python side: start moto on a free port, print it, serve until stdin closes.
const BOOTSTRAP: &str = r#"
import logging, os, sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)
import moto
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("PORT", server.get_host_and_port()[1], "VERSION", moto.__version__, flush=True)
sys.stdin.read()
os._exit(0)
"#;

/// A running moto server; killed when dropped.
pub struct Moto {
    /// `http://127.0.0.1:PORT`, for path-style clients (any credentials are accepted).
    pub endpoint: String,
    pub port: u16,
    child: Child,
    /// Held open: moto exits when it closes.
    _stdin: ChildStdin,
    stderr: Arc<Mutex<String>>,
}

impl Moto {
    /// Starts a moto server of its own.
    ///
    /// # Panics
    /// If Python or moto is missing, or moto does not come up within a minute; the
    /// message says to `pip install "moto[server]"`. `S3VOL_TEST_PYTHON` names another
    /// interpreter than `python3`.
    pub fn start() -> Moto {
        let python = std::env::var("S3VOL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        Moto::start_with(&python, &[])
    }

    /// Starts moto with the interpreter `python` and its options `python_args`.
    ///
    /// # Panics
    /// As [`Moto::start`].
    pub fn start_with(python: &str, python_args: &[&str]) -> Moto {
        super::assert_in_turn();
        let mut child = Command::new(python)
            .args(python_args)
            .args(["-c", BOOTSTRAP])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} ({e}); {INSTALL_HINT}"));
        let stdin = child.stdin.take().expect("stdin is piped");
        let (stderr, stderr_reader) = drain(child.stderr.take().expect("stderr is piped"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let started = rx.recv_timeout(START_TIMEOUT).ok().and_then(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("PORT"), Some(port), Some("VERSION"), Some(version)) => {
                    Some((port.parse::<u16>().ok()?, version.to_owned()))
                }
                _ => None,
            }
        });
        let Some((port, version)) = started else {
            let _ = child.kill();
            let _ = child.wait();
            // The pipe is closed now that the process is gone: the reader ends.
            let _ = stderr_reader.join();
            let errors = stderr.lock().unwrap_or_else(PoisonError::into_inner).clone();
            panic!("moto server did not start: {INSTALL_HINT}\n--- its stderr ---\n{errors}");
        };
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child,
            _stdin: stdin,
            stderr,
        };
        let [major, minor, patch] = MIN_VERSION;
        assert!(
            version_at_least(&version, MIN_VERSION),
            "moto {version} is too old for these tests (CompleteMultipartUpload answers XML \
             aws-sdk-s3 cannot parse): pip install -U \"moto[server]>={major}.{minor}.{patch}\""
        );
        moto
    }

    /// One moto server shared by the tests of a test binary that overlap in time (moto
    /// takes about a second to start); it is killed when the last user drops it. Tests
    /// sharing it must use buckets of their own ([`Moto::new_bucket`]).
    pub fn shared() -> Arc<Moto> {
        static SHARED: Mutex<Weak<Moto>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(moto) = slot.upgrade() {
            return moto;
        }
        let moto = Arc::new(Moto::start());
        *slot = Arc::downgrade(&moto);
        moto
    }

    /// Creates a bucket named `stem-N` (unique on this server) and returns its name.
    /// `stem` must be a valid bucket name start: lower case, digits, `-`.
    pub fn new_bucket(&self, stem: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("{stem}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.create_bucket(&name);
        name
    }

    /// Creates `bucket` with a plain HTTP request (moto does not check signatures).
    ///
    /// # Panics
    /// If moto does not answer 200.
    pub fn create_bucket(&self, bucket: &str) {
        let status = self.request(&format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        ));
        assert!(
            status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"),
            "moto refused to create bucket {bucket}: {status}"
        );
    }

    /// What moto wrote on stderr so far (errors only), for assertion messages.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sends one raw HTTP/1.1 request and returns the whole response.
    fn request(&self, request: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("moto on port {} is unreachable: {e}", self.port));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("a non-zero timeout");
        stream.write_all(request.as_bytes()).expect("request sent to moto");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .unwrap_or_else(|e| panic!("no answer from moto: {e}"));
        response
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a version like `5.2.5` or `5.3.0.dev4` is at least `min`.
pub fn version_at_least(version: &str, min: [u32; 3]) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let have = [(); 3].map(|()| parts.next().unwrap_or(0));
    have >= min
}

/// Reads a pipe to its end in a thread (so the child never blocks on a full pipe),
/// keeping the first 16 KiB; the thread ends when the pipe closes.
fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut text = sink.lock().unwrap_or_else(PoisonError::into_inner);
            if text.len() < 16 * 1024 {
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    (text, reader)
}

// ---------------------------------------------------------------- this harness

#[test]
fn missing_moto_fails_with_the_install_hint() {
    let _turn = super::shared();
    // `-S` leaves site-packages (and so moto) off Python's path: as if it were not installed.
    let failure = std::panic::catch_unwind(|| Moto::start_with("python3", &["-S"]))
        .err()
        .expect("starting moto without site-packages fails");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("pip install \"moto[server]\""), "{message}");
    assert!(
        message.contains("No module named"),
        "Python's error is shown: {message}"
    );

    let failure = std::panic::catch_unwind(|| Moto::start_with("/nonexistent/python3", &[]))
        .err()
        .expect("a missing interpreter fails");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("pip install \"moto[server]\""), "{message}");
}

#[test]
fn moto_versions_compare_numerically() {
    let _turn = super::shared();
    assert!(version_at_least("5.2.2", [5, 2, 2]));
    assert!(version_at_least("5.10.0", [5, 2, 2]));
    assert!(version_at_least("6.0.0.dev1", [5, 2, 2]));
    assert!(!version_at_least("5.2.1", [5, 2, 2]));
    assert!(!version_at_least("4.2.14", [5, 2, 2]));
}
