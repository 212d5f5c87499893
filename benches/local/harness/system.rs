//! The machine: its CPUs, kernel and load, the page cache, a process's memory, and
//! commands run to completion.

use crate::config::KIB;
use std::process::Command;

/// Empties the kernel page cache where allowed (root). Reads are cold anyway: every read
/// figure uses a fresh mount, and a fresh FUSE mount starts without cached pages; this
/// also evicts the local tree and anything else between runs.
pub fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// The peak RSS of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    process_memory(pid, "VmHWM:")
}

/// The RSS of a process now (VmRSS), in bytes.
pub fn current_rss(pid: u32) -> Option<u64> {
    process_memory(pid, "VmRSS:")
}

/// A memory figure of /proc/PID/status, in bytes.
fn process_memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The 1, 5 and 15 minute load averages: other work on the machine moves every figure.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Runs `command` with its output on ours; panics unless it succeeds.
pub fn run_command(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(status.success(), "{command:?} failed: {status}");
}

/// Runs `command`; returns the number of lines it printed.
pub fn output_lines(command: &mut Command) -> usize {
    let output = command.output().expect("run the command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.iter().filter(|&&b| b == b'\n').count()
}
