//! The daemon's control socket: `s3vol status` and `s3vol unmount` talk to a running mount
//! over a unix socket only its owner (root: root) can open.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountStatus {
    pub source: String,
    pub mountpoint: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub read_only: bool,
    pub cache_bytes: u64,
    pub cache_budget: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub fetched_bytes: u64,
    pub open_files: usize,
    pub requests: u64,
    pub request_errors: u64,
    pub requests_in_flight: u64,
    pub list_requests: u64,
    pub head_requests: u64,
    pub inodes: u64,
    pub dirty_files: u64,
    pub dirty_bytes: u64,
    pub dirty_memory: u64,
    pub uploads_pending: u64,
    pub uploads_failed: u64,
    /// Files changed here and remotely: this mount's version was kept beside the name.
    #[serde(default)]
    pub conflicts: u64,
    pub cache_dir: String,
    pub disk_bytes: u64,
    pub disk_budget: u64,
    pub disk_hits: u64,
    pub disk_misses: u64,
    pub disk_evictions: u64,
    pub disk_corrupt: u64,
}

/// The answer to `flush`: what was waited for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlushReport {
    pub files: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

/// Where control sockets live: root's in /run, a user's in their runtime directory.
pub fn socket_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/s3vol");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("s3vol"),
        None => PathBuf::from(format!("/tmp/s3vol-{}", nix::unistd::geteuid())),
    }
}

/// One socket per mountpoint, named by a hash of its path (paths can be longer than a
/// socket name may be).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in mountpoint.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    socket_dir().join(format!("{hash:016x}.sock"))
}

/// Sends one command line and reads one reply line.
pub fn request(socket: &Path, command: &str, timeout: Option<Duration>) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(timeout)?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// Every reachable mount's status; stale sockets (a daemon that died) are removed.
pub fn all_statuses() -> Vec<MountStatus> {
    let Ok(entries) = std::fs::read_dir(socket_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        match request(&path, "status", Some(Duration::from_secs(5))) {
            Ok(line) => {
                if let Ok(status) = serde_json::from_str(&line) {
                    out.push(status);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => {}
        }
    }
    out.sort_by(|a: &MountStatus, b| a.mountpoint.cmp(&b.mountpoint));
    out
}
