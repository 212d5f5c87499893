//! The mount's Prometheus metrics (`--metrics-addr`): FUSE operations and S3 requests are
//! recorded here as they happen, into fixed arrays of atomics (no lock, no allocation on
//! the I/O path); everything else (caches, write-back, memory, inodes) is read from the
//! same snapshot `s3vol status` shows, when scraped. `render` writes the text format.

use crate::control::MountStatus;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets, in seconds: from a FUSE answer out of
/// memory (tens of µs) to a GET across an ocean with retries (seconds).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Errno values counted one by one; larger ones count as the last.
const ERRNOS: usize = 134;

#[derive(Default)]
struct Histogram {
    /// Per bucket, then one for +Inf.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// The kernel requests the adapter answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Forget,
    Getattr,
    Readlink,
    Open,
    Read,
    Release,
    Write,
    Flush,
    Fsync,
    Create,
    Setattr,
    Mkdir,
    Symlink,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Statfs,
    Getxattr,
    Listxattr,
    Ioctl,
}

const FUSE_OPS: [&str; 26] = [
    "lookup",
    "forget",
    "getattr",
    "readlink",
    "open",
    "read",
    "release",
    "write",
    "flush",
    "fsync",
    "create",
    "setattr",
    "mkdir",
    "symlink",
    "unlink",
    "rmdir",
    "rename",
    "link",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "statfs",
    "getxattr",
    "listxattr",
    "ioctl",
];

/// S3 operations by the name the store logs them with; anything else is "Other".
const S3_OPS: [&str; 14] = [
    "GetObject",
    "HeadObject",
    "ListObjectsV2",
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "CopyObject",
    "DeleteObject",
    "DeleteObjects",
    "RenameObject",
    "Other",
];

/// How an S3 request ended, as the label `outcome`.
const OUTCOMES: [&str; 11] = [
    "ok",
    "not_found",
    "access_denied",
    "credentials_rejected",
    "credentials_expired",
    "no_space",
    "precondition_failed",
    "invalid_name",
    "unsupported",
    "transient",
    "other",
];

#[derive(Default)]
struct FuseStats {
    duration: Histogram,
    errors: Vec<AtomicU64>,
}

#[derive(Default)]
struct S3Stats {
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// To the answer's headers: for a GET, its first byte.
    first_byte: Histogram,
    /// A GET's whole body.
    body: Histogram,
    retries: AtomicU64,
}

pub struct Metrics {
    fuse: Vec<FuseStats>,
    s3: Vec<S3Stats>,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            fuse: FUSE_OPS
                .iter()
                .map(|_| FuseStats {
                    duration: Histogram::default(),
                    errors: (0..ERRNOS).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
            s3: S3_OPS.iter().map(|_| S3Stats::default()).collect(),
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
        }
    }
}

/// The operation named first in `what` ("GetObject bytes=0-9" is a GetObject).
fn s3_op(what: &str) -> usize {
    let name = what.split_whitespace().next().unwrap_or("");
    S3_OPS.iter().position(|op| *op == name).unwrap_or(S3_OPS.len() - 1)
}

impl Metrics {
    /// A kernel request answered after `elapsed`, with `errno` (0: success).
    pub fn fuse_done(&self, op: FuseOp, elapsed: Duration, errno: i32) {
        let stats = &self.fuse[op as usize];
        stats.duration.observe(elapsed);
        if errno != 0 {
            let i = usize::try_from(errno).unwrap_or(ERRNOS - 1).min(ERRNOS - 1);
            stats.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One S3 request's answer (`outcome`: a label of [`OUTCOMES`]) after `elapsed`.
    pub fn s3_done(&self, what: &str, outcome: &str, elapsed: Duration) {
        let stats = &self.s3[s3_op(what)];
        let i = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(OUTCOMES.len() - 1);
        stats.outcomes[i].fetch_add(1, Ordering::Relaxed);
        stats.first_byte.observe(elapsed);
    }

    pub fn s3_retry(&self, what: &str) {
        self.s3[s3_op(what)].retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A GET's body, whole, `elapsed` after the request went out.
    pub fn get_body_done(&self, elapsed: Duration) {
        self.s3[s3_op("GetObject")].body.observe(elapsed);
    }

    pub fn received(&self, bytes: u64) {
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: u64) {
        self.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes received and sent so far (for `s3vol status`).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.received_bytes.load(Ordering::Relaxed),
            self.sent_bytes.load(Ordering::Relaxed),
        )
    }

    /// The text format (version 0.0.4), every series labelled with the mount's source and
    /// mountpoint, so several mounts on one host never collide.
    pub fn render(&self, status: &MountStatus, resident_bytes: Option<u64>, memory_budget: u64) -> String {
        let mount = format!(
            "source=\"{}\",mountpoint=\"{}\"",
            escape(&status.source),
            escape(&status.mountpoint)
        );
        let mut out = String::with_capacity(64 * 1024);
        self.render_fuse(&mut out, &mount);
        self.render_s3(&mut out, &mount);
        render_status(&mut out, &mount, status, resident_bytes, memory_budget);
        out
    }

    fn render_fuse(&self, out: &mut String, mount: &str) {
        header(
            out,
            "s3vol_fuse_operations_total",
            "counter",
            "Kernel requests answered, by operation.",
        );
        for (name, stats) in FUSE_OPS.iter().zip(&self.fuse) {
            let _ = writeln!(
                out,
                "s3vol_fuse_operations_total{{{mount},operation=\"{name}\"}} {}",
                stats.duration.count()
            );
        }
        header(
            out,
            "s3vol_fuse_errors_total",
            "counter",
            "Kernel requests answered with an error, by operation and errno.",
        );
        for (name, stats) in FUSE_OPS.iter().zip(&self.fuse) {
            for (errno, count) in stats.errors.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let errno = errno_name(errno as i32);
                    let _ = writeln!(
                        out,
                        "s3vol_fuse_errors_total{{{mount},operation=\"{name}\",errno=\"{errno}\"}} {count}"
                    );
                }
            }
        }
        header(
            out,
            "s3vol_fuse_operation_duration_seconds",
            "histogram",
            "Time from a kernel request to its answer.",
        );
        for (name, stats) in FUSE_OPS.iter().zip(&self.fuse) {
            if stats.duration.count() > 0 {
                let labels = format!("{mount},operation=\"{name}\"");
                stats
                    .duration
                    .render(out, "s3vol_fuse_operation_duration_seconds", &labels);
            }
        }
    }

    fn render_s3(&self, out: &mut String, mount: &str) {
        header(
            out,
            "s3vol_s3_requests_total",
            "counter",
            "S3 requests answered, by operation and outcome.",
        );
        for (name, stats) in S3_OPS.iter().zip(&self.s3) {
            for (outcome, count) in OUTCOMES.iter().zip(&stats.outcomes) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "s3vol_s3_requests_total{{{mount},operation=\"{name}\",outcome=\"{outcome}\"}} {count}"
                    );
                }
            }
        }
        header(
            out,
            "s3vol_s3_retries_total",
            "counter",
            "S3 requests sent again after a transient failure, by operation.",
        );
        for (name, stats) in S3_OPS.iter().zip(&self.s3) {
            let _ = writeln!(
                out,
                "s3vol_s3_retries_total{{{mount},operation=\"{name}\"}} {}",
                stats.retries.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "s3vol_s3_first_byte_seconds",
            "histogram",
            "Time from an S3 request to its answer's headers (a GET's first byte), by operation.",
        );
        for (name, stats) in S3_OPS.iter().zip(&self.s3) {
            if stats.first_byte.count() > 0 {
                let labels = format!("{mount},operation=\"{name}\"");
                stats.first_byte.render(out, "s3vol_s3_first_byte_seconds", &labels);
            }
        }
        header(
            out,
            "s3vol_s3_get_duration_seconds",
            "histogram",
            "Time from a GET to the last byte of its body.",
        );
        self.s3[s3_op("GetObject")]
            .body
            .render(out, "s3vol_s3_get_duration_seconds", mount);
        counter(
            out,
            "s3vol_s3_received_bytes_total",
            "Bytes of GET bodies received.",
            mount,
            self.received_bytes.load(Ordering::Relaxed),
        );
        counter(
            out,
            "s3vol_s3_sent_bytes_total",
            "Bytes of PUT and UploadPart bodies sent.",
            mount,
            self.sent_bytes.load(Ordering::Relaxed),
        );
    }
}

fn render_status(out: &mut String, mount: &str, s: &MountStatus, resident: Option<u64>, memory_budget: u64) {
    gauge(
        out,
        "s3vol_s3_requests_in_flight",
        "S3 requests under way.",
        mount,
        s.requests_in_flight,
    );
    header(
        out,
        "s3vol_cache_hits_total",
        "counter",
        "Block reads found in a cache tier.",
    );
    let _ = writeln!(
        out,
        "s3vol_cache_hits_total{{{mount},tier=\"memory\"}} {}",
        s.cache_hits
    );
    let _ = writeln!(out, "s3vol_cache_hits_total{{{mount},tier=\"disk\"}} {}", s.disk_hits);
    let _ = writeln!(
        out,
        "s3vol_cache_hits_total{{{mount},tier=\"shared\"}} {}",
        s.shared_hits
    );
    header(
        out,
        "s3vol_cache_misses_total",
        "counter",
        "Block reads not found in a cache tier.",
    );
    let _ = writeln!(
        out,
        "s3vol_cache_misses_total{{{mount},tier=\"memory\"}} {}",
        s.cache_misses
    );
    let _ = writeln!(
        out,
        "s3vol_cache_misses_total{{{mount},tier=\"disk\"}} {}",
        s.disk_misses
    );
    let _ = writeln!(
        out,
        "s3vol_cache_misses_total{{{mount},tier=\"shared\"}} {}",
        s.shared_misses + s.shared_rejected
    );
    header(
        out,
        "s3vol_cache_evictions_total",
        "counter",
        "Blocks evicted from the disk cache.",
    );
    let _ = writeln!(
        out,
        "s3vol_cache_evictions_total{{{mount},tier=\"disk\"}} {}",
        s.disk_evictions
    );
    counter(
        out,
        "s3vol_cache_corrupt_blocks_total",
        "Disk cache blocks found corrupt (dropped and fetched again).",
        mount,
        s.disk_corrupt,
    );
    counter(
        out,
        "s3vol_passthrough_opens_total",
        "Opens read by the kernel from the disk cache's whole copy of the file (FUSE passthrough).",
        mount,
        s.passthrough_opens,
    );
    header(out, "s3vol_cache_bytes", "gauge", "Bytes held by a cache tier.");
    let _ = writeln!(out, "s3vol_cache_bytes{{{mount},tier=\"memory\"}} {}", s.cache_bytes);
    let _ = writeln!(out, "s3vol_cache_bytes{{{mount},tier=\"disk\"}} {}", s.disk_bytes);
    header(out, "s3vol_cache_budget_bytes", "gauge", "The budget of a cache tier.");
    let _ = writeln!(
        out,
        "s3vol_cache_budget_bytes{{{mount},tier=\"memory\"}} {}",
        s.cache_budget
    );
    let _ = writeln!(
        out,
        "s3vol_cache_budget_bytes{{{mount},tier=\"disk\"}} {}",
        s.disk_budget
    );
    counter(
        out,
        "s3vol_fetched_bytes_total",
        "Bytes of blocks fetched from the bucket.",
        mount,
        s.fetched_bytes,
    );
    gauge(
        out,
        "s3vol_dirty_files",
        "Files written here and not yet in the bucket.",
        mount,
        s.dirty_files,
    );
    gauge(out, "s3vol_dirty_bytes", "Bytes of those files.", mount, s.dirty_bytes);
    gauge(
        out,
        "s3vol_dirty_memory_bytes",
        "Memory holding written data not yet staged or uploaded.",
        mount,
        s.dirty_memory,
    );
    gauge(
        out,
        "s3vol_uploads_pending",
        "Uploads queued or under way (journaled on local disk).",
        mount,
        s.uploads_pending,
    );
    gauge(
        out,
        "s3vol_uploads_in_flight",
        "Of the pending uploads, those sending now.",
        mount,
        s.uploads_in_flight,
    );
    gauge(
        out,
        "s3vol_journal_records",
        "Journal records in the cache directory: files and deletes a crash now would leave for the next mount to send.",
        mount,
        s.journal_records,
    );
    gauge(
        out,
        "s3vol_uploads_failed",
        "Uploads that failed and wait for their next try.",
        mount,
        s.uploads_failed,
    );
    gauge(
        out,
        "s3vol_upload_refusals",
        "Files the bucket refused (see s3vol status), kept in staging.",
        mount,
        s.upload_failures.len() as u64,
    );
    gauge(
        out,
        "s3vol_open_files",
        "Files open through the mount.",
        mount,
        s.open_files,
    );
    gauge(out, "s3vol_inodes", "Inodes the mount holds.", mount, s.inodes);
    gauge(
        out,
        "s3vol_memory_budget_bytes",
        "--memory-limit.",
        mount,
        memory_budget,
    );
    if let Some(resident) = resident {
        gauge(
            out,
            "s3vol_resident_memory_bytes",
            "The daemon's resident memory.",
            mount,
            resident,
        );
    }
    gauge(
        out,
        "s3vol_uptime_seconds",
        "Time since the mount started.",
        mount,
        s.uptime_secs,
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, mount: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name}{{{mount}}} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, mount: &str, value: impl std::fmt::Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name}{{{mount}}} {value}");
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The symbolic name of the errnos a filesystem answers with; the number otherwise.
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        _ => return errno.to_string(),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_what_was_observed() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn s3_operations_are_named_by_their_first_word_and_errnos_by_name() {
        assert_eq!(S3_OPS[s3_op("GetObject bytes=0-9")], "GetObject");
        assert_eq!(S3_OPS[s3_op("Frobnicate")], "Other");
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(200), "200");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        // An errno past the table counts in its last slot, never out of bounds.
        Metrics::default().fuse_done(FuseOp::Read, Duration::ZERO, 5000);
    }
}
