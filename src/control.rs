//! The daemon's control socket: `s3vol status` and `s3vol unmount` talk to a running mount
//! over a unix socket only its owner (root: root) can open.

use crate::private_dir::{self, Link, Purpose};
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
    #[serde(default)]
    pub uploads_in_flight: u64,
    /// Journal records (in the cache directory) of files and deletes not yet in the bucket.
    #[serde(default)]
    pub journal_records: u64,
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
    /// Opens read by the kernel from the disk cache's whole copy (FUSE passthrough).
    #[serde(default)]
    pub passthrough_opens: u64,
    /// Uploads the bucket refused: their data stays until uploaded, deleted or discarded.
    #[serde(default)]
    pub upload_failures: Vec<UploadFailure>,
    /// The largest files not yet in the bucket.
    #[serde(default)]
    pub largest_dirty: Vec<DirtyFile>,
    /// Bytes of GET bodies received, and of PUT and part bodies sent.
    #[serde(default)]
    pub received_bytes: u64,
    #[serde(default)]
    pub sent_bytes: u64,
    /// The shared cache tier's blocks: found, not found, found but not valid, requests
    /// failed, written, not written (writes at their bound), and bytes read from it.
    #[serde(default)]
    pub shared_hits: u64,
    #[serde(default)]
    pub shared_misses: u64,
    #[serde(default)]
    pub shared_rejected: u64,
    #[serde(default)]
    pub shared_errors: u64,
    #[serde(default)]
    pub shared_writes: u64,
    #[serde(default)]
    pub shared_writes_dropped: u64,
    #[serde(default)]
    pub shared_bytes: u64,
    /// Small files fetched ahead of their opens, and opens that found theirs fetched or on
    /// its way.
    #[serde(default)]
    pub prefetched_files: u64,
    #[serde(default)]
    pub prefetched_files_used: u64,
    /// Bytes of files read at random put into the kernel's page cache ahead of the reader.
    #[serde(default)]
    pub pushed_to_kernel_bytes: u64,
}

/// A file written here and not yet in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirtyFile {
    pub path: String,
    pub bytes: u64,
}

/// A file whose upload the bucket refused, by its path in the mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadFailure {
    pub path: String,
    pub reason: String,
}

/// The answer to `flush` (unmount) and `sync`: what was waited for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlushReport {
    pub files: u64,
    pub bytes: u64,
    pub error: Option<String>,
    #[serde(default)]
    pub refused: Vec<UploadFailure>,
}

const SOCKET_DIR: Purpose = Purpose {
    what: "control socket directory",
    elsewhere: "set XDG_RUNTIME_DIR to a private directory of yours",
};

/// Where control sockets live: root's in /run, a user's in their runtime directory, else
/// in /tmp (a predictable name, so it is used only if it is private and ours: see
/// `prepare_socket_dir`).
pub fn socket_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/s3vol");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("s3vol"),
        None => PathBuf::from(format!("/tmp/s3vol-{}", nix::unistd::geteuid())),
    }
}

/// Creates the socket directory (0700) or checks it (lstat: a real directory, owned by
/// this user, writable by nobody else) before a mount serves its socket there. The error
/// is a message for the user.
pub fn prepare_socket_dir() -> Result<PathBuf, String> {
    let dir = socket_dir();
    if let Some(mode) = private_dir::create(&dir, SOCKET_DIR, Link::Refuse)? {
        tracing::warn!(
            "control socket directory {} was readable by other users (mode {mode:04o}); made private (0700)",
            dir.display()
        );
    }
    Ok(dir)
}

/// The socket directory for a client, checked as `prepare_socket_dir` does; `None` if
/// there is none (no mount of this user ever ran).
pub fn existing_socket_dir() -> Result<Option<PathBuf>, String> {
    let dir = socket_dir();
    Ok(private_dir::check(&dir, SOCKET_DIR, Link::Refuse)?.then_some(dir))
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

/// Every reachable mount's status; stale sockets (a daemon that died) are removed. An
/// unsafe socket directory is an error: its sockets could be anyone's.
pub fn all_statuses() -> Result<Vec<MountStatus>, String> {
    let Some(dir) = existing_socket_dir()? else {
        return Ok(Vec::new());
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
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
    Ok(out)
}

/// Whether `mountinfo` (the text of /proc/self/mountinfo) shows an s3vol mount on
/// `mountpoint`: a FUSE filesystem of subtype s3vol (`fuse.s3vol`, as fusermount3 mounts
/// it), or of type `fuse` (root mounts directly, and the subtype is not kept) whose
/// source is an s3vol SOURCE (`s3://test`: s3vol names its mounts so).
pub fn is_s3vol_mount(mountinfo: &str, mountpoint: &Path) -> bool {
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        let at = fields.get(4).is_some_and(|mp| Path::new(&unescape(mp)) == mountpoint);
        let fstype = fields.get(separator + 1).copied().unwrap_or("");
        let source = unescape(fields.get(separator + 2).copied().unwrap_or(""));
        at && (fstype == "fuse.s3vol" || (fstype == "fuse" && crate::source::Source::parse(&source).is_ok()))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')) as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an s3vol daemon serves `mountpoint` now: it is an s3vol mount and it answers
/// (a killed daemon's mount fails with ENOTCONN). A daemon that does not answer within
/// a few seconds counts as alive: it may be busy, and its data is not to be given up on.
pub fn live_s3vol_mount(mountpoint: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !is_s3vol_mount(&mountinfo, mountpoint) {
        return false;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&path).map_err(|e| e.raw_os_error()));
    });
    !matches!(rx.recv_timeout(Duration::from_secs(5)), Ok(Err(Some(libc::ENOTCONN))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3vol_mounts_are_found_in_mountinfo() {
        let info = "\
36 25 0:32 / /mnt/a rw,nosuid,nodev,noatime - fuse.s3vol s3://test rw,user_id=0,group_id=0
37 25 0:33 / /mnt/my\\040vol rw,nosuid shared:5 - fuse.s3vol s3://b rw,user_id=0,group_id=0
38 25 0:34 / /mnt/direct rw - fuse s3://c rw,user_id=0,group_id=0,default_permissions
39 25 0:35 / /mnt/other rw - fuse.sshfs host: rw,user_id=0
40 25 0:36 / /mnt/plain rw - fuse x rw,user_id=0
";
        assert!(is_s3vol_mount(info, Path::new("/mnt/a")));
        assert!(is_s3vol_mount(info, Path::new("/mnt/my vol")));
        assert!(is_s3vol_mount(info, Path::new("/mnt/direct")));
        assert!(!is_s3vol_mount(info, Path::new("/mnt/other")));
        assert!(!is_s3vol_mount(info, Path::new("/mnt/plain")));
        assert!(!is_s3vol_mount(info, Path::new("/mnt")));
        assert!(!is_s3vol_mount("", Path::new("/mnt/a")));
    }
}
