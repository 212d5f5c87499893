//! 1. Raw GET: what the client and server do without FUSE.

use crate::config::MIB;
use crate::harness::raw::{get_ranges, split_ranges};
use crate::harness::{Bench, READ_BUCKET, big_key};
use crate::report::{mib_per_sec, rate_text, size_text};

/// The raw GET baseline: ranges and parallelism of a well-tuned downloader.
const RAW_RANGE: u64 = 8 * MIB;
const RAW_RANGES_IN_FLIGHT: usize = 8;
/// A second raw GET figure with s3vol's block size and prefetch depth, to tell the cost
/// of many small requests from the cost of FUSE.
const SMALL_RANGE: u64 = MIB;
const SMALL_RANGES_IN_FLIGHT: usize = 64;

/// The parallel ranged-GET rate in MiB/s, measured once (with the rows of this workload).
pub fn raw_get_rate(bench: &mut Bench) -> f64 {
    if bench.raw_get_rate.is_none() {
        bench_raw_get(bench);
    }
    bench.raw_get_rate.expect("measured")
}

pub fn bench_raw_get(bench: &mut Bench) {
    bench.ensure_big_objects(1);
    let store = bench.store(READ_BUCKET);
    let size = bench.config.big_size;
    let key = big_key(0);
    let ranges = split_ranges(size, RAW_RANGE);

    let parallel = bench.measure(|| {
        let download = get_ranges(&store, &key, &ranges, RAW_RANGES_IN_FLIGHT);
        bench.runtime.block_on(download)
    });
    assert_eq!(parallel.value, size, "ranged GETs returned the whole object");
    let parallel_rate = mib_per_sec(size, parallel.elapsed);
    bench.raw_get_rate = Some(parallel_rate);
    println!("  ranged GETs: {}", parallel.requests_text());
    bench.report.add(
        format!("raw GET of {}: 8 MiB ranges, 8 in flight", size_text(size)),
        "—",
        rate_text(parallel_rate),
        None,
    );

    // s3vol's prefetcher asks for single blocks; this shows what request size costs.
    let small_ranges = split_ranges(size, SMALL_RANGE);
    let small = bench.measure(|| {
        let download = get_ranges(&store, &key, &small_ranges, SMALL_RANGES_IN_FLIGHT);
        bench.runtime.block_on(download)
    });
    assert_eq!(small.value, size, "1 MiB ranged GETs returned the whole object");
    bench.report.add(
        format!("raw GET of {}: 1 MiB ranges, 64 in flight", size_text(size)),
        "—",
        rate_text(mib_per_sec(size, small.elapsed)),
        None,
    );

    let single = bench.measure(|| {
        bench
            .runtime
            .block_on(get_ranges(&store, &key, std::slice::from_ref(&(0..size)), 1))
    });
    assert_eq!(single.value, size, "one GET returned the whole object");
    bench.report.add(
        format!("raw GET of {}: one GET", size_text(size)),
        "—",
        rate_text(mib_per_sec(size, single.elapsed)),
        None,
    );
}
