//! 3. Random 256 KiB reads through the mount, cold.

use super::distinct_counts;
use crate::config::KIB;
use crate::harness::raw::get_ranges;
use crate::harness::system::drop_page_cache;
use crate::harness::{Bench, READ_BUCKET, big_key};
use crate::report::{mib_per_sec, per_sec, rate_text, size_text};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Size of one read (and of the alignment of its offset) in the random-read workload.
const RANDOM_READ: u64 = 256 * KIB;

pub fn bench_random_reads(bench: &mut Bench) {
    bench.ensure_big_objects(1);
    let offsets = random_offsets(bench.config.big_size, bench.config.random_reads);
    let store = bench.store(READ_BUCKET);
    let key = big_key(0);
    let ranges: Vec<Range<u64>> = offsets.iter().map(|&o| o..o + RANDOM_READ).collect();
    for threads in distinct_counts(bench.config.random_threads) {
        let mount = bench.mount(READ_BUCKET, &[]);
        drop_page_cache();
        let path = mount.join(&key);
        let run = bench.measure(|| read_at_offsets(&path, &offsets, threads));
        println!("  {threads} thread(s): {}; {}", run.requests_text(), mount.summary());
        drop(mount);
        let raw = bench.measure(|| bench.runtime.block_on(get_ranges(&store, &key, &ranges, threads)));
        let reads = offsets.len() as u64;
        let (rate, raw_rate) = (per_sec(reads, run.elapsed), per_sec(reads, raw.elapsed));
        bench.report.add(
            format!(
                "random {} reads at distinct aligned offsets, {threads} thread(s), cold mount",
                size_text(RANDOM_READ)
            ),
            format!(
                "{rate:.0} reads/s ({})",
                rate_text(mib_per_sec(reads * RANDOM_READ, run.elapsed))
            ),
            format!("{raw_rate:.0} GETs/s ({threads} in flight)"),
            Some(rate / raw_rate),
        );
    }
}

/// `count` distinct RANDOM_READ-aligned offsets in a shuffled order (distinct, so every
/// read misses the caches: a cold random read each time).
fn random_offsets(object_size: u64, count: usize) -> Vec<u64> {
    let mut blocks: Vec<u64> = (0..object_size / RANDOM_READ).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut blocks);
    if count > blocks.len() {
        println!(
            "  only {} distinct offsets in the object; reading each once",
            blocks.len()
        );
    }
    blocks.into_iter().take(count).map(|b| b * RANDOM_READ).collect()
}

/// Reads RANDOM_READ bytes at every offset, the offsets dealt round-robin to `threads`
/// threads that each open the file themselves.
fn read_at_offsets(path: &Path, offsets: &[u64], threads: usize) {
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let mine: Vec<u64> = offsets.iter().skip(thread).step_by(threads).copied().collect();
            scope.spawn(move || {
                let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                let mut buffer = vec![0u8; RANDOM_READ as usize];
                for offset in mine {
                    file.read_exact_at(&mut buffer, offset)
                        .unwrap_or_else(|e| panic!("read at {offset}: {e}"));
                }
            });
        }
    });
}
