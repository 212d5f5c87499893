//! 2. Sequential reads through the mount, cold.

use super::{IO_BUFFER, distinct_counts, get::raw_get_rate};
use crate::harness::mount::Mount;
use crate::harness::system::drop_page_cache;
use crate::harness::{Bench, READ_BUCKET, big_key};
use crate::report::{mib_per_sec, rate_text, size_text};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn bench_sequential_reads(bench: &mut Bench) {
    let raw_rate = raw_get_rate(bench);
    let readers = bench.config.readers;
    bench.ensure_big_objects(readers);
    let size = bench.config.big_size;
    for count in distinct_counts(readers) {
        let paths = |mount: &Mount| (0..count).map(|i| mount.join(&big_key(i))).collect::<Vec<_>>();
        let mount = bench.mount(READ_BUCKET, &[]);
        drop_page_cache();
        let files = paths(&mount);
        let run = bench.measure(|| read_concurrently(&files));
        let total = size * count as u64;
        assert_eq!(run.value, total, "every reader read its whole object");
        println!("  {count} reader(s): {}; {}", run.requests_text(), mount.summary());
        let requests: u64 = run.requests.values().sum();
        println!(
            "  {}",
            metrics_cost_text(total.div_ceil(IO_BUFFER as u64), requests, run.elapsed)
        );
        let rate = mib_per_sec(total, run.elapsed);
        let what = match count {
            1 => format!("seq read, 1 reader, {} object, cold mount", size_text(size)),
            n => format!(
                "seq read, {n} readers of {n} different {} objects, cold mount (aggregate)",
                size_text(size)
            ),
        };
        bench.report.add(
            what,
            rate_text(rate),
            format!("{} (ranged GET)", rate_text(raw_rate)),
            Some(rate / raw_rate),
        );
    }
}

/// What recording the metrics of a run cost: the time of `fuse_reads` FUSE reads and
/// `requests` S3 requests recorded as the daemon records them (atomics, from 2 threads at
/// once), against the run's `elapsed` time.
fn metrics_cost_text(fuse_reads: u64, requests: u64, elapsed: Duration) -> String {
    use s3vol::metrics::{FuseOp, Metrics};
    let metrics = Metrics::default();
    let rounds = 1_000_000u64;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for i in 0..rounds / 2 {
                    metrics.fuse_done(FuseOp::Read, Duration::from_nanos(i % 50_000), 0);
                    metrics.s3_done("GetObject bytes=0-1", "ok", Duration::from_nanos(i % 90_000));
                }
            });
        }
    });
    let per_record = started.elapsed().as_secs_f64() / (2 * rounds) as f64;
    let spent = per_record * (fuse_reads + requests) as f64;
    format!(
        "metrics: {:.0} ns per recorded request; {fuse_reads} FUSE reads and {requests} S3 requests: {:.3} ms of {:.2} s ({:.4}%)",
        per_record * 1e9,
        spent * 1e3,
        elapsed.as_secs_f64(),
        100.0 * spent / elapsed.as_secs_f64()
    )
}

/// Reads every file to its end, each in its own thread, with 1 MiB reads; returns the
/// bytes read in all.
fn read_concurrently(paths: &[PathBuf]) -> u64 {
    std::thread::scope(|scope| {
        let readers: Vec<_> = paths.iter().map(|path| scope.spawn(|| read_to_end(path))).collect();
        readers.into_iter().map(|r| r.join().expect("reader")).sum()
    })
}

fn read_to_end(path: &Path) -> u64 {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buffer = vec![0u8; IO_BUFFER];
    let mut total = 0;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }
}
