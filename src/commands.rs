//! `s3vol unmount`, `sync`, `discard` and `status`: clients of a running mount's control
//! socket.

use s3vol::cli::{DiscardArgs, StatusArgs, SyncArgs, UnmountArgs};
use s3vol::control::{self, FlushReport, MountStatus};
use std::io::IsTerminal;
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
    let report = wait_with_progress(socket, "flush")?;
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

/// Sends `command` (`flush` or `sync`), showing what is left while the daemon works: one
/// line redrawn in place on a terminal, a plain line every few seconds otherwise.
fn wait_with_progress(socket: &std::path::Path, command: &str) -> Result<FlushReport, String> {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::thread::spawn({
        let (socket, done) = (socket.to_path_buf(), done.clone());
        move || progress_lines(&socket, &done)
    });
    let reply = control::request(socket, command, None).map_err(|e| format!("{command}: {e}"));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = progress.join();
    serde_json::from_str(&reply?).map_err(|e| format!("bad {command} reply: {e}"))
}

fn progress_lines(socket: &std::path::Path, done: &std::sync::atomic::AtomicBool) {
    let terminal = std::io::stdout().is_terminal();
    let every = if terminal { 2 } else { 25 };
    let mut tracker = Progress::default();
    let mut ticks = 0u32;
    let mut drawn = false;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        ticks += 1;
        if !ticks.is_multiple_of(every) {
            continue;
        }
        let Ok(line) = control::request(socket, "status", Some(Duration::from_secs(5))) else {
            continue;
        };
        let Ok(s) = serde_json::from_str::<MountStatus>(&line) else {
            continue;
        };
        let text = tracker.line(&s);
        if terminal {
            use std::io::Write;
            let _ = write!(std::io::stdout(), "\r\x1b[K{text}");
            let _ = std::io::stdout().flush();
            drawn = true;
        } else {
            progress!("  {text}");
        }
    }
    if drawn {
        use std::io::Write;
        let _ = write!(std::io::stdout(), "\r\x1b[K");
        let _ = std::io::stdout().flush();
    }
}

/// What is left to upload, and how fast it goes, from successive statuses.
#[derive(Default)]
struct Progress {
    last: Option<(Instant, u64)>,
    /// Bytes per second, smoothed.
    rate: f64,
}

impl Progress {
    fn line(&mut self, s: &MountStatus) -> String {
        let now = Instant::now();
        let left = s.dirty_bytes;
        if let Some((then, before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64().max(0.001);
            let sample = before.saturating_sub(left) as f64 / secs;
            self.rate = if self.rate == 0.0 {
                sample
            } else {
                0.7 * self.rate + 0.3 * sample
            };
        }
        self.last = Some((now, left));
        let eta = if self.rate > 1.0 {
            format!(", about {}s left", (left as f64 / self.rate).ceil() as u64)
        } else {
            String::new()
        };
        let refused = match s.upload_failures.len() {
            0 => String::new(),
            n => format!(", {n} refused"),
        };
        format!(
            "{} files, {:.1} MiB to upload ({} uploads pending{refused}), {:.1} MiB/s{eta}",
            s.dirty_files,
            left as f64 / (1 << 20) as f64,
            s.uploads_pending,
            self.rate / (1 << 20) as f64
        )
    }
}

/// This user's mounts, or the one on `mountpoint`; `None` (said on stderr) if there is
/// none there or the mounts cannot be asked.
fn mounts_on(mountpoint: Option<&std::path::Path>) -> Option<Vec<MountStatus>> {
    let mut mounts = control::all_statuses()
        .map_err(|message| eprintln!("s3vol: {message}"))
        .ok()?;
    if let Some(mp) = mountpoint {
        let mp = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
        mounts.retain(|m| std::path::Path::new(&m.mountpoint) == mp);
        if mounts.is_empty() {
            eprintln!("s3vol: no s3vol mount on {}", mp.display());
            return None;
        }
    }
    Some(mounts)
}

/// `s3vol sync [MOUNTPOINT]`: everything written before it is in the bucket when it
/// returns 0; refused files are named and it returns 1.
pub fn sync(args: &SyncArgs) -> ExitCode {
    let Some(mounts) = mounts_on(args.mountpoint.as_deref()) else {
        return ExitCode::FAILURE;
    };
    let mut failed = false;
    for m in &mounts {
        let socket = control::socket_path(std::path::Path::new(&m.mountpoint));
        match wait_with_progress(&socket, "sync") {
            Ok(report) => {
                for r in &report.refused {
                    eprintln!("s3vol: {}/{}: upload refused: {}", m.mountpoint, r.path, r.reason);
                }
                match report.error {
                    Some(e) => {
                        eprintln!("s3vol: {}: {e}", m.mountpoint);
                        failed = true;
                    }
                    None => progress!("{}: everything written is in the bucket", m.mountpoint),
                }
            }
            Err(e) => {
                eprintln!("s3vol: {}: {e}", m.mountpoint);
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// `s3vol discard PATH...`: drops the refused local changes of each file, through the
/// mount that holds it.
pub fn discard(args: &DiscardArgs) -> ExitCode {
    let mounts = match control::all_statuses() {
        Ok(mounts) => mounts,
        Err(message) => {
            eprintln!("s3vol: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for path in &args.paths {
        let absolute = match path.parent().map(std::fs::canonicalize) {
            Some(Ok(dir)) => path.file_name().map_or(dir.clone(), |name| dir.join(name)),
            _ => std::path::absolute(path).unwrap_or_else(|_| path.clone()),
        };
        let owner = mounts
            .iter()
            .filter_map(|m| Some((m, absolute.strip_prefix(&m.mountpoint).ok()?)))
            .max_by_key(|(m, _)| m.mountpoint.len());
        let Some((m, relative)) = owner else {
            eprintln!("s3vol: {}: not inside an s3vol mount of this user", path.display());
            failed = true;
            continue;
        };
        let socket = control::socket_path(std::path::Path::new(&m.mountpoint));
        let command = format!("discard {}", relative.display());
        let reply = control::request(&socket, &command, Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())
            .and_then(|line| serde_json::from_str::<serde_json::Value>(&line).map_err(|e| e.to_string()));
        match reply {
            Ok(v) if v.get("discarded").is_some() => progress!("discarded the local changes of {}", path.display()),
            Ok(v) => {
                let e = v.get("error").and_then(|e| e.as_str()).unwrap_or("unexpected reply");
                eprintln!("s3vol: {e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("s3vol: {}: {e}", path.display());
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

pub fn status(args: &StatusArgs) -> ExitCode {
    if let Some(secs) = args.watch {
        let every = Duration::from_secs_f64(secs);
        let mountpoint = args.mountpoint.as_deref();
        return match crate::status_watch::watch(every, None, || mounts_on(mountpoint)) {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        };
    }
    let Some(mounts) = mounts_on(args.mountpoint.as_deref()) else {
        return ExitCode::FAILURE;
    };
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
    if m.passthrough_opens > 0 {
        println!(
            "  passthrough: {} opens read by the kernel from the disk cache's whole copy",
            m.passthrough_opens
        );
    }
    if m.prefetched_files > 0 {
        println!(
            "  ahead:    {} small files fetched before their open; {} opens found theirs fetched or on its way",
            m.prefetched_files, m.prefetched_files_used
        );
    }
    if m.pushed_to_kernel_bytes > 0 {
        println!(
            "  pushed:   {} bytes of files read at random put into the page cache ahead of their reader",
            m.pushed_to_kernel_bytes
        );
    }
    if m.shared_hits + m.shared_misses + m.shared_rejected + m.shared_errors + m.shared_writes > 0 {
        println!(
            "  shared:   {} hits ({} bytes), {} misses, {} invalid blocks ignored, {} failed requests; {} blocks written, {} not written (write queue full)",
            m.shared_hits,
            m.shared_bytes,
            m.shared_misses,
            m.shared_rejected,
            m.shared_errors,
            m.shared_writes,
            m.shared_writes_dropped
        );
    }
    println!("  files:    {} open, {} inodes cached", m.open_files, m.inodes);
    println!(
        "  dirty:    {} files, {} bytes ({} in memory); uploads {} pending ({} sending), {} failed; {} journal records",
        m.dirty_files,
        m.dirty_bytes,
        m.dirty_memory,
        m.uploads_pending,
        m.uploads_in_flight,
        m.uploads_failed,
        m.journal_records
    );
    for f in &m.upload_failures {
        println!(
            "  refused:  {} ({}); `s3vol discard {}/{}` drops it",
            f.path, f.reason, m.mountpoint, f.path
        );
    }
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
    use s3vol::cache_dir::cache_dir_in_use;
    use s3vol::fs::disk_cache::clear_unlocked;
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
            clear_unlocked(&dir).and_then(|n| {
                // What mounts remembered of the bucket's files goes with the blocks.
                s3vol::fs::remembered_metadata::clear_unlocked(&dir).map(|_| format!("removed {n} blocks"))
            })
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

/// `s3vol shared-cache prune`.
pub fn shared_cache_prune(args: &s3vol::cli::PruneArgs) -> ExitCode {
    let _ = s3vol::logging::init(s3vol::logging::LogTarget::Stderr, false);
    let result = s3vol::mount::runtime().and_then(|rt| rt.block_on(s3vol::shared_cache::prune(args)));
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("s3vol: {message}");
            ExitCode::FAILURE
        }
    }
}
