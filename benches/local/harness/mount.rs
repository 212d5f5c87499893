//! A real mount of a bucket (`s3vol mount -f` in a child process), undone on drop (also
//! on panic), and the daemon's figures: peak RSS, `s3vol status`, warnings in its log.

use super::system::peak_rss;
use crate::report::size_text;
use s3vol::server::RunningServer;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mount {
    pub path: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// `s3vol mount -f s3://BUCKET` in a child process; returns once the mount is live.
    pub fn new(server: &RunningServer, bucket: &str, extra: &[&str], configured: &[String]) -> Mount {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let log = dir.path().join("s3vol.log");
        let child = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .arg("mount")
            .arg(format!("s3://{bucket}"))
            .arg(&path)
            .args([
                "-f",
                "--endpoint-url",
                &server.endpoint,
                "--force-path-style",
                "--region",
                "us-east-1",
            ])
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(extra)
            .args(configured)
            .env("AWS_ACCESS_KEY_ID", &server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start s3vol");
        let mut mount = Mount {
            path,
            log,
            child: Some(child),
            _dir: dir,
        };
        mount.wait_until_live();
        mount
    }

    fn wait_until_live(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.path) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("s3vol exited with {status} before mounting:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "no mount after 30 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.path.join(relative)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's peak RSS, its block cache figures (`s3vol status`) and the warnings it
    /// logged so far: the evidence behind a figure.
    pub fn summary(&self) -> String {
        let peak = self.child.as_ref().and_then(|c| peak_rss(c.id()));
        let mut text = format!("daemon peak RSS {}", peak.map_or_else(|| "?".to_owned(), size_text));
        if let Some(status) = self.status() {
            text += &format!("; {}", status_text(&status));
        }
        let log = self.log_text();
        let mut problems = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR"));
        match problems.next() {
            None => text += "; no warnings",
            Some(first) => {
                text += &format!(
                    "; {} warning/error lines, first: {}",
                    1 + problems.count(),
                    first.trim()
                )
            }
        }
        text
    }

    /// Sets the kernel's readahead of this mount (its BDI is named after the mount's
    /// device number). The kernel caps a FUSE mount's readahead at its default (128 KiB)
    /// whatever max_readahead the daemon asks for; this shows what a larger one gives.
    pub fn set_read_ahead_kb(&self, kb: usize) {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&self.path).expect("mountpoint").dev();
        let bdi = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
        if let Err(e) = std::fs::write(&bdi, kb.to_string()) {
            println!("  cannot set {bdi}: {e}");
        }
    }

    /// `s3vol status --json` of this mount, if the daemon answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let output = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .args(["status", "--json"])
            .arg(&self.path)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let mounts: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        mounts.get(0).cloned()
    }

    /// Unmounts (lazily if asked, as when a panic may leave files open), waits for the
    /// daemon, and kills it, by its PID, only if it does not exit.
    fn stop(&mut self, lazy_first: bool) {
        if lazy_first {
            fusermount(&self.path, true);
        }
        fusermount(&self.path, false);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    eprintln!("s3vol (pid {}) did not exit after unmount; killing it", child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        fusermount(&self.path, true);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("--- s3vol log ---\n{}", self.log_text());
        }
        self.stop(panicking);
    }
}

fn fusermount(path: &Path, lazy: bool) {
    if is_mounted(path) {
        let mut command = Command::new("fusermount3");
        command.arg("-u");
        if lazy {
            command.arg("-z");
        }
        let _ = command.arg(path).status();
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(wanted.as_str()))
}

/// The block cache's figures from `s3vol status`: bytes fetched from the bucket (against
/// bytes read, the read amplification), the memory cache's hit rate and fill, and what
/// the disk cache holds.
fn status_text(status: &serde_json::Value) -> String {
    let field = |name: &str| status.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
    format!(
        "status: fetched {}, cache {} hits / {} misses, {} of {} cached; disk cache {} of {}",
        size_text(field("fetched_bytes")),
        field("cache_hits"),
        field("cache_misses"),
        size_text(field("cache_bytes")),
        size_text(field("cache_budget")),
        size_text(field("disk_bytes")),
        size_text(field("disk_budget")),
    )
}
