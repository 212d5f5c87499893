//! `s3vol unmount` and `s3vol status`: clients of a running mount's control socket.

use s3vol::cli::{StatusArgs, UnmountArgs};
use s3vol::control::{self, FlushReport, MountStatus};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// A line of an unmount's progress. Nobody may be reading stdout (a closed pipe, a
/// detached job): that must not stop the flush and unmount halfway, as `println!` would.
macro_rules! progress {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn unmount(args: &UnmountArgs) -> ExitCode {
    let mountpoint = std::fs::canonicalize(&args.mountpoint).unwrap_or_else(|_| args.mountpoint.clone());
    if let Err(message) = control::existing_socket_dir() {
        eprintln!("s3vol: {message}; not unmounting {}", mountpoint.display());
        return ExitCode::FAILURE;
    }
    let socket = control::socket_path(&mountpoint);
    if let Err(message) = flush(&socket, &mountpoint) {
        eprintln!("s3vol: {message}; not unmounting {}", mountpoint.display());
        return ExitCode::FAILURE;
    }
    let output = Command::new("fusermount3").arg("-u").arg(&mountpoint).output();
    match output {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "s3vol: cannot unmount {}: {}",
                mountpoint.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("s3vol: cannot run fusermount3 (install fuse3): {e}");
            return ExitCode::FAILURE;
        }
    }
    // The daemon removes its socket as it exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    progress!("unmounted {}", mountpoint.display());
    ExitCode::SUCCESS
}

/// Asks the daemon to upload everything dirty, printing what it waits for.
fn flush(socket: &std::path::Path, mountpoint: &std::path::Path) -> Result<(), String> {
    let line = match control::request(socket, "status", Some(Duration::from_secs(10))) {
        Ok(line) => line,
        // A live daemon that cannot be asked to flush: unmounting now would not wait for
        // its uploads (and their errors would go unseen).
        Err(e) if control::live_s3vol_mount(mountpoint) => {
            return Err(format!(
                "{} is a live s3vol mount, but its control socket {} does not answer ({e}), so its dirty data cannot be uploaded first; `fusermount3 -u {}` unmounts it without waiting (the daemon still uploads what is dirty as it exits, and logs failures)",
                mountpoint.display(),
                socket.display(),
                mountpoint.display()
            ));
        }
        // No daemon (killed: the journal keeps its data; or not an s3vol mount): nothing
        // to flush.
        Err(_) => return Ok(()),
    };
    let status: MountStatus = serde_json::from_str(&line).map_err(|e| format!("bad status reply: {e}"))?;
    if status.dirty_files > 0 || status.uploads_pending > 0 {
        progress!(
            "uploading {} files ({} bytes) before unmounting...",
            status.dirty_files,
            status.dirty_bytes
        );
    }
    let progress = std::thread::spawn({
        let socket = socket.to_path_buf();
        move || progress_lines(&socket)
    });
    let reply = control::request(socket, "flush", None).map_err(|e| format!("flush: {e}"));
    DONE.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = progress.join();
    let report: FlushReport = serde_json::from_str(&reply?).map_err(|e| format!("bad flush reply: {e}"))?;
    match report.error {
        Some(e) => Err(e),
        None => {
            if report.files > 0 {
                progress!("uploaded {} files ({} bytes)", report.files, report.bytes);
            }
            Ok(())
        }
    }
}

static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A progress line every few seconds while a long flush runs.
fn progress_lines(socket: &std::path::Path) {
    let mut ticks = 0u32;
    while !DONE.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        ticks += 1;
        if !ticks.is_multiple_of(15) {
            continue;
        }
        if let Ok(line) = control::request(socket, "status", Some(Duration::from_secs(5)))
            && let Ok(s) = serde_json::from_str::<MountStatus>(&line)
        {
            progress!(
                "  still uploading: {} files, {} bytes dirty, {} uploads pending",
                s.dirty_files,
                s.dirty_bytes,
                s.uploads_pending
            );
        }
    }
}

pub fn status(args: &StatusArgs) -> ExitCode {
    let mut mounts = match control::all_statuses() {
        Ok(mounts) => mounts,
        Err(message) => {
            eprintln!("s3vol: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(mp) = &args.mountpoint {
        let mp = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.clone());
        mounts.retain(|m| std::path::Path::new(&m.mountpoint) == mp);
        if mounts.is_empty() {
            eprintln!("s3vol: no s3vol mount on {}", mp.display());
            return ExitCode::FAILURE;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&mounts).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if mounts.is_empty() {
        println!("no s3vol mounts");
    }
    for m in &mounts {
        print_status(m);
    }
    ExitCode::SUCCESS
}

fn print_status(m: &MountStatus) {
    let lookups = m.cache_hits + m.cache_misses;
    let hit_rate = if lookups == 0 {
        0.0
    } else {
        100.0 * m.cache_hits as f64 / lookups as f64
    };
    println!(
        "{} on {} (pid {}, up {}s{})",
        m.source,
        m.mountpoint,
        m.pid,
        m.uptime_secs,
        if m.read_only { ", read-only" } else { "" }
    );
    println!(
        "  cache:    {} of {} bytes, hit rate {hit_rate:.1}% ({} hits, {} misses), {} bytes fetched",
        m.cache_bytes, m.cache_budget, m.cache_hits, m.cache_misses, m.fetched_bytes
    );
    println!(
        "  requests: {} ({} failed, {} in flight; {} LIST, {} HEAD by the namespace)",
        m.requests, m.request_errors, m.requests_in_flight, m.list_requests, m.head_requests
    );
    let disk_lookups = m.disk_hits + m.disk_misses;
    let disk_rate = if disk_lookups == 0 {
        0.0
    } else {
        100.0 * m.disk_hits as f64 / disk_lookups as f64
    };
    println!(
        "  disk:     {} of {} bytes in {}, hit rate {disk_rate:.1}%, {} evictions, {} corrupt blocks dropped",
        m.disk_bytes, m.disk_budget, m.cache_dir, m.disk_evictions, m.disk_corrupt
    );
    println!("  files:    {} open, {} inodes cached", m.open_files, m.inodes);
    println!(
        "  dirty:    {} files, {} bytes ({} in memory); uploads {} pending, {} failed",
        m.dirty_files, m.dirty_bytes, m.dirty_memory, m.uploads_pending, m.uploads_failed
    );
    if m.conflicts > 0 {
        println!(
            "  conflicts: {} files changed here and remotely; this mount's versions are kept as NAME.s3vol-conflict-TIMESTAMP",
            m.conflicts
        );
    }
}

/// `s3vol cache clear`: each cache instance is emptied by the mount holding it, or here
/// when no mount does.
pub fn cache_clear(cache_dir: Option<std::path::PathBuf>) -> ExitCode {
    use s3vol::fs::disk_cache::{cache_dir_in_use, clear_unlocked};
    let base = cache_dir.unwrap_or_else(s3vol::mount::default_cache_dir);
    let mut instances = vec![base.clone()];
    if let Ok(entries) = std::fs::read_dir(&base) {
        instances.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("mount-"))),
        );
    }
    let mounts = match control::all_statuses() {
        Ok(mounts) => mounts,
        Err(message) => {
            eprintln!("s3vol: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for dir in instances {
        let result = if cache_dir_in_use(&dir) {
            let shown = dir.display().to_string();
            match mounts.iter().find(|m| m.cache_dir == shown) {
                Some(m) => control::request(
                    &control::socket_path(std::path::Path::new(&m.mountpoint)),
                    "cache-clear",
                    None,
                )
                .map(|reply| format!("cleared by the mount on {}: {}", m.mountpoint, reply.trim())),
                None => Err(std::io::Error::other("in use by a mount this user cannot reach")),
            }
        } else {
            clear_unlocked(&dir).map(|n| format!("removed {n} blocks"))
        };
        match result {
            Ok(message) => println!("{}: {message}", dir.display()),
            Err(e) => {
                eprintln!("s3vol: {}: {e}", dir.display());
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
