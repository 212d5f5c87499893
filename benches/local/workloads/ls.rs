//! 4. ls -l of a large directory.

use crate::harness::raw::list_all;
use crate::harness::system::output_lines;
use crate::harness::{Bench, READ_BUCKET};
use crate::report::{secs, thousands};
use s3vol::server::RunningServer;
use std::path::Path;
use std::process::Command;

/// The directory of many small files, in READ_BUCKET.
const MANY_DIR: &str = "many";

pub fn bench_ls(bench: &mut Bench) {
    let files = bench.config.ls_files;
    put_many_small_objects(&bench.server, files);
    let mount = bench.mount(READ_BUCKET, &[]);
    let dir = mount.join(MANY_DIR);
    let cold = bench.measure(|| ls_long(&dir));
    println!("  cold: {} lines; {}", cold.value, cold.requests_text());
    let warm = bench.measure(|| ls_long(&dir));
    println!(
        "  again (within the metadata TTL): {}; {}",
        warm.requests_text(),
        mount.summary()
    );
    drop(mount);

    let store = bench.store(READ_BUCKET);
    let raw = bench.measure(|| bench.runtime.block_on(list_all(&store, &format!("{MANY_DIR}/"))));
    assert_eq!(raw.value, files, "raw listing sees every file");
    bench.report.add(
        format!("ls -l of {} files, cold mount", thousands(files)),
        format!(
            "{:.2} s, {} LIST, {} HEAD (target ≈{} LIST, 0 HEAD)",
            secs(cold.elapsed),
            cold.count("ListObjectsV2"),
            cold.count("HeadObject"),
            files.div_ceil(1000)
        ),
        format!("{:.2} s, {} LIST pages", secs(raw.elapsed), raw.count("ListObjectsV2")),
        Some(secs(raw.elapsed) / secs(cold.elapsed)),
    );
    bench.report.add(
        format!("ls -l of {} files again, same mount", thousands(files)),
        format!(
            "{:.2} s, {} LIST, {} HEAD",
            secs(warm.elapsed),
            warm.count("ListObjectsV2"),
            warm.count("HeadObject")
        ),
        "—",
        None,
    );
}

/// `many/f00000` ... with small bodies of varied length, straight into the backend.
fn put_many_small_objects(server: &RunningServer, count: usize) {
    for i in 0..count {
        let body = format!("file {i}\n").repeat(1 + i % 7);
        let key = format!("{MANY_DIR}/f{i:05}");
        server
            .backend()
            .put_object(READ_BUCKET, &key, body, &[])
            .expect("bucket");
    }
}

/// Runs `ls -l DIR`; returns the number of lines it printed (files + the "total" line).
fn ls_long(dir: &Path) -> usize {
    output_lines(Command::new("ls").arg("-l").arg(dir))
}
