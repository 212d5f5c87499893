//! 8. (Only when named.) A directory of a million keys: listing it and the daemon's memory.

use crate::config::MIB;
use crate::harness::system::{current_rss, output_lines, peak_rss};
use crate::harness::{Bench, READ_BUCKET};
use crate::report::{secs, size_text, thousands};
use bytes::Bytes;
use std::process::Command;
use std::time::Instant;

/// The directory of the `bigdir` workload, in READ_BUCKET.
const BIG_DIR: &str = "bigdir";

/// Issue 20 item 7: `ls -f` and then `find` of one directory of `bigdir_files` empty
/// objects, on a mount with a small --memory-limit. The figures are the daemon's peak RSS
/// against that limit and what each listed entry costs it (RSS growth / entries).
pub fn bench_big_directory(bench: &mut Bench) {
    let files = bench.config.bigdir_files;
    let limit_mib = bench.config.bigdir_memory_mib as u64;
    let started = Instant::now();
    for i in 0..files {
        bench
            .server
            .backend()
            .put_object(READ_BUCKET, &big_dir_key(i), Bytes::new(), &[])
            .expect("bucket");
    }
    println!(
        "  {} keys in place ({:.1} s)",
        thousands(files),
        secs(started.elapsed())
    );

    let limit = format!("{limit_mib}MiB");
    let mount = bench.mount(READ_BUCKET, &["--memory-limit", &limit]);
    let pid = mount.pid();
    let idle = current_rss(pid).expect("daemon alive");
    let dir = mount.join(BIG_DIR);
    // `ls -f` reads the directory without sorting or a stat per entry; it prints . and ..
    let ls = bench.measure(|| output_lines(Command::new("ls").arg("-f").arg(&dir)));
    assert_eq!(ls.value, files + 2, "ls -f lists every key once, plus . and ..");
    let after_ls = peak_rss(pid).expect("daemon alive");
    let inodes_after_ls = mount.status().and_then(|s| s["inodes"].as_u64());
    println!(
        "  ls -f: {} lines in {:.1} s; {}; peak RSS {} (idle {}), inodes {:?}",
        thousands(ls.value),
        secs(ls.elapsed),
        ls.requests_text(),
        size_text(after_ls),
        size_text(idle),
        inodes_after_ls
    );
    // find prints the directory itself and each entry; it also reads every d_type.
    let find = bench.measure(|| output_lines(Command::new("find").arg(&dir)));
    assert_eq!(find.value, files + 1, "find lists every key once, plus the directory");
    let peak = peak_rss(pid).expect("daemon alive");
    let now = current_rss(pid).expect("daemon alive");
    println!(
        "  find (same mount): {} lines in {:.1} s; {}; peak RSS {}, RSS now {}; {}",
        thousands(find.value),
        secs(find.elapsed),
        find.requests_text(),
        size_text(peak),
        size_text(now),
        mount.summary()
    );
    drop(mount);

    let limit_bytes = limit_mib * MIB;
    let per_entry = peak.saturating_sub(idle) as f64 / files as f64;
    bench.report.add(
        format!(
            "ls -f, then find, of {} keys in one directory, --memory-limit {limit}",
            thousands(files)
        ),
        format!(
            "{:.1} s + {:.1} s, {} LIST; peak RSS {} = limit {} {}; {:.0} B per listed entry above the idle {}",
            secs(ls.elapsed),
            secs(find.elapsed),
            ls.count("ListObjectsV2") + find.count("ListObjectsV2"),
            size_text(peak),
            if peak <= limit_bytes { "−" } else { "+" },
            size_text(peak.abs_diff(limit_bytes)),
            per_entry,
            size_text(idle),
        ),
        "—",
        None,
    );
    for i in 0..files {
        bench.server.backend().delete_object(READ_BUCKET, &big_dir_key(i));
    }
}

/// The `index`th key of the big directory.
fn big_dir_key(index: usize) -> String {
    format!("{BIG_DIR}/k{index:07}")
}
