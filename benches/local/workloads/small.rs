//! 6. Create+write of many small files.

use super::{IO_BUFFER, ON_CLOSE, RAW_SMALL_IN_FLIGHT, UPLOAD_MODES, upload_mode_label, write_file};
use crate::config::{KIB, MIB};
use crate::harness::bucket::{empty_bucket, wait_for_file_count};
use crate::harness::raw::put_objects;
use crate::harness::{Bench, pseudo_random_bytes};
use crate::report::{per_sec, size_text, thousands};
use bytes::Bytes;
use std::time::Duration;

pub fn bench_small_files(bench: &mut Bench) {
    let files = small_files(bench.config.small_files);
    let bytes: u64 = files.iter().map(|(_, body)| body.len() as u64).sum();
    println!("  {} files, {} in all", files.len(), size_text(bytes));
    let raw_sequential = raw_put_rate(bench, "bench-small-raw1", &files, 1);
    let raw_concurrent = raw_put_rate(bench, "bench-small-raw32", &files, RAW_SMALL_IN_FLIGHT);
    for mode in UPLOAD_MODES {
        let bucket = format!("bench-small-{mode}");
        let (returned, settled) = write_small_files_through_mount(bench, &bucket, &files, mode);
        let n = files.len() as u64;
        let rate = per_sec(n, settled);
        let label = upload_mode_label(mode);
        let s3vol = match mode {
            ON_CLOSE => format!("{rate:.0} files/s"),
            _ => format!(
                "{rate:.0} files/s until uploaded ({:.0} files/s until the writer returned)",
                per_sec(n, returned)
            ),
        };
        bench.report.add(
            format!(
                "create+write {} files of 4–64 KiB, 1 writer, {label}",
                thousands(files.len())
            ),
            s3vol,
            format!(
                "{raw_sequential:.0} PUT/s sequential, {raw_concurrent:.0} PUT/s with {RAW_SMALL_IN_FLIGHT} in flight"
            ),
            Some(rate / raw_concurrent),
        );
    }
}

/// Deterministic names and sizes (4–64 KiB) with distinct contents.
fn small_files(count: usize) -> Vec<(String, Bytes)> {
    let mut rng = fastrand::Rng::with_seed(64);
    let pool = pseudo_random_bytes(2 * MIB as usize, 0xf11e);
    (0..count)
        .map(|i| {
            let len = rng.usize(4 * KIB as usize..=64 * KIB as usize);
            let start = rng.usize(..pool.len() - len);
            (format!("f{i:05}.bin"), pool.slice(start..start + len))
        })
        .collect()
}

/// Writes every file into the mount root, one after the other as `cp` would; returns the
/// time until the writer finished and the time until the bucket held every file (the same
/// unless uploads are deferred).
fn write_small_files_through_mount(
    bench: &Bench,
    bucket: &str,
    files: &[(String, Bytes)],
    mode: &str,
) -> (Duration, Duration) {
    bench.server.backend().create_bucket(bucket);
    let mount = bench.mount(bucket, &["--upload-mode", mode]);
    let run = bench.measure_settled(
        || {
            for (name, body) in files {
                write_file(&mount.join(name), body, IO_BUFFER);
            }
        },
        || wait_for_file_count(&bench.server, bucket, files.len()),
    );
    println!(
        "  {}: {}; {}",
        upload_mode_label(mode),
        run.requests_text(),
        mount.summary()
    );
    drop(mount);
    empty_bucket(&bench.server, bucket);
    (run.value, run.elapsed)
}

/// PutObject of every file with `in_flight` at once, into a fresh bucket; returns PUT/s.
fn raw_put_rate(bench: &Bench, bucket: &str, files: &[(String, Bytes)], in_flight: usize) -> f64 {
    bench.server.backend().create_bucket(bucket);
    let store = bench.store(bucket);
    let run = bench.measure(|| bench.runtime.block_on(put_objects(&store, files, in_flight)));
    empty_bucket(&bench.server, bucket);
    per_sec(files.len() as u64, run.elapsed)
}
