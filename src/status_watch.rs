//! `s3vol status --watch [SECS]`: the mounts' activity, refreshed every SECS — in place on a
//! terminal, as plain blocks of lines otherwise (a log, a pipe).

use s3vol::control::MountStatus;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const MIB: f64 = (1 << 20) as f64;

/// Runs until interrupted (or until `rounds` views, for tests); `fetch` asks the mounts.
pub fn watch(every: Duration, rounds: Option<u64>, fetch: impl Fn() -> Option<Vec<MountStatus>>) -> bool {
    let terminal = std::io::stdout().is_terminal();
    let mut last: HashMap<String, (Instant, MountStatus)> = HashMap::new();
    let mut round = 0;
    loop {
        let Some(mounts) = fetch() else {
            return false;
        };
        let now = Instant::now();
        let mut text = String::new();
        if mounts.is_empty() {
            text.push_str("no s3vol mounts\n");
        }
        for m in &mounts {
            let before = last.get(&m.mountpoint);
            text.push_str(&view(m, before.map(|(t, s)| (now.duration_since(*t).as_secs_f64(), s))));
        }
        last = mounts.into_iter().map(|m| (m.mountpoint.clone(), (now, m))).collect();
        let mut out = std::io::stdout();
        let written = if terminal {
            // Home, then clear below: the view is redrawn where it was.
            write!(out, "\x1b[H\x1b[J{text}")
        } else {
            writeln!(out, "{text}")
        };
        if written.and_then(|()| out.flush()).is_err() {
            return true;
        }
        round += 1;
        if rounds.is_some_and(|r| round >= r) {
            return true;
        }
        std::thread::sleep(every);
    }
}

/// One mount's view; rates over the `(seconds, status)` before, when there is one.
fn view(m: &MountStatus, before: Option<(f64, &MountStatus)>) -> String {
    let mut out = format!("{} on {} (up {}s)\n", m.source, m.mountpoint, m.uptime_secs);
    match before {
        Some((secs, b)) => {
            let secs = secs.max(0.001);
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            let ratio = |hits: u64, misses: u64, bh: u64, bm: u64| {
                let (h, n) = (hits.saturating_sub(bh), (hits + misses).saturating_sub(bh + bm));
                if n == 0 {
                    "—".to_string()
                } else {
                    format!("{:.0}%", 100.0 * h as f64 / n as f64)
                }
            };
            out.push_str(&format!(
                "  read {:.1} MiB/s from the bucket, wrote {:.1} MiB/s; {:.0} requests/s ({:.0} failed/s, {} in flight)\n",
                rate(m.received_bytes, b.received_bytes) / MIB,
                rate(m.sent_bytes, b.sent_bytes) / MIB,
                rate(m.requests, b.requests),
                rate(m.request_errors, b.request_errors),
                m.requests_in_flight,
            ));
            out.push_str(&format!(
                "  hit rate: memory {}, disk {}, shared {}\n",
                ratio(m.cache_hits, m.cache_misses, b.cache_hits, b.cache_misses),
                ratio(m.disk_hits, m.disk_misses, b.disk_hits, b.disk_misses),
                ratio(
                    m.shared_hits,
                    m.shared_misses + m.shared_rejected,
                    b.shared_hits,
                    b.shared_misses + b.shared_rejected
                ),
            ));
        }
        None => out.push_str("  (rates from the next refresh on)\n"),
    }
    out.push_str(&format!(
        "  pending: {} files, {:.1} MiB ({} uploads queued, {} sending, {} waiting for a retry; {} journal records)\n",
        m.dirty_files,
        m.dirty_bytes as f64 / MIB,
        m.uploads_pending,
        m.uploads_in_flight,
        m.uploads_failed,
        m.journal_records
    ));
    for f in &m.largest_dirty {
        out.push_str(&format!("    {:>10.1} MiB  {}\n", f.bytes as f64 / MIB, f.path));
    }
    for f in &m.upload_failures {
        out.push_str(&format!("  refused: {} ({})\n", f.path, f.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3vol::control::DirtyFile;

    fn status() -> MountStatus {
        serde_json::from_value(serde_json::json!({
            "source": "s3://b", "mountpoint": "/mnt", "pid": 1, "uptime_secs": 10, "read_only": false,
            "cache_bytes": 0, "cache_budget": 0, "cache_hits": 0, "cache_misses": 0, "fetched_bytes": 0,
            "open_files": 0, "requests": 0, "request_errors": 0, "requests_in_flight": 0,
            "list_requests": 0, "head_requests": 0, "inodes": 0, "dirty_files": 0, "dirty_bytes": 0,
            "dirty_memory": 0, "uploads_pending": 0, "uploads_failed": 0, "cache_dir": "/c",
            "disk_bytes": 0, "disk_budget": 0, "disk_hits": 0, "disk_misses": 0, "disk_evictions": 0,
            "disk_corrupt": 0
        }))
        .unwrap()
    }

    #[test]
    fn rates_hit_rates_and_the_largest_pending_files() {
        let before = status();
        let mut now = status();
        now.received_bytes = 20 << 20;
        now.requests = 40;
        now.cache_hits = 3;
        now.cache_misses = 1;
        now.dirty_files = 2;
        now.dirty_bytes = 3 << 20;
        now.largest_dirty = vec![DirtyFile {
            path: "ckpt/model.bin".into(),
            bytes: 2 << 20,
        }];
        let text = view(&now, Some((2.0, &before)));
        assert!(text.contains("read 10.0 MiB/s"), "{text}");
        assert!(text.contains("20 requests/s"), "{text}");
        assert!(text.contains("memory 75%, disk —"), "{text}");
        assert!(text.contains("2.0 MiB  ckpt/model.bin"), "{text}");
        assert!(view(&now, None).contains("rates from the next refresh"));
    }

    #[test]
    fn watching_stops_after_its_rounds_and_when_the_mounts_cannot_be_asked() {
        assert!(watch(Duration::ZERO, Some(2), || Some(vec![status()])));
        assert!(!watch(Duration::ZERO, Some(2), || None));
    }
}
