//! 5. Sequential write through the mount.

use super::{IO_BUFFER, write_file};
use crate::config::MIB;
use crate::harness::Bench;
use crate::harness::bucket::{expect_object_size, wait_for};
use crate::harness::raw::multipart_upload;
use crate::report::{mib_per_sec, rate_text, size_text};

/// The raw multipart baseline: the AWS profile's preferred part size.
const RAW_PART: u64 = 16 * MIB;
const RAW_PARTS_IN_FLIGHT: usize = 8;

pub fn bench_sequential_write(bench: &mut Bench) {
    let size = bench.config.big_size;
    let bucket = "bench-write";
    bench.server.backend().create_bucket(bucket);

    let mount = bench.mount(bucket, &[]);
    let path = mount.join("big.bin");
    // Until the object is in the bucket: with the default write-back, close() returns
    // before the upload has completed.
    let run = bench.measure(|| {
        write_file(&path, &bench.data, IO_BUFFER);
        wait_for(&bench.server, bucket, |keys| keys.iter().any(|k| k == "big.bin"));
    });
    println!("  mount: {}; {}", run.requests_text(), mount.summary());
    drop(mount);
    expect_object_size(&bench.server, bucket, "big.bin", size);
    bench.server.backend().delete_object(bucket, "big.bin");

    let store = bench.store(bucket);
    let raw = bench.measure(|| {
        let upload = multipart_upload(&store, "raw.bin", &bench.data, RAW_PART, RAW_PARTS_IN_FLIGHT);
        bench.runtime.block_on(upload)
    });
    println!("  raw: {}", raw.requests_text());
    expect_object_size(&bench.server, bucket, "raw.bin", size);
    bench.server.backend().delete_object(bucket, "raw.bin");

    let (rate, raw_rate) = (mib_per_sec(size, run.elapsed), mib_per_sec(size, raw.elapsed));
    bench.report.add(
        format!("seq write of {}, 1 MiB writes, until in the bucket", size_text(size)),
        rate_text(rate),
        format!("{} (multipart, 16 MiB parts, 8 in flight)", rate_text(raw_rate)),
        Some(rate / raw_rate),
    );
}
