//! `s3vol unmount` and `s3vol status`: clients of a running mount's control socket.

use s3vol::cli::{StatusArgs, UnmountArgs};
use s3vol::control::{self, MountStatus};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

pub fn unmount(args: &UnmountArgs) -> ExitCode {
    let mountpoint = std::fs::canonicalize(&args.mountpoint).unwrap_or_else(|_| args.mountpoint.clone());
    let socket = control::socket_path(&mountpoint);
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
    println!("unmounted {}", mountpoint.display());
    ExitCode::SUCCESS
}

pub fn status(args: &StatusArgs) -> ExitCode {
    let mut mounts = control::all_statuses();
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
    println!("  files:    {} open", m.open_files);
}
