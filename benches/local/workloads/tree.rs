//! 7. cp -r and rm -r of a tree of small files.

use super::{ON_CLOSE, RAW_SMALL_IN_FLIGHT, UPLOAD_MODES, upload_mode_label};
use crate::config::KIB;
use crate::harness::Bench;
use crate::harness::bucket::{wait_for_empty_bucket, wait_for_file_count};
use crate::harness::raw::{delete_objects, put_objects};
use crate::harness::system::run_command;
use crate::report::{secs, thousands};
use bytes::Bytes;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub fn bench_tree(bench: &mut Bench) {
    let (dirs, count) = (bench.config.tree_dirs, bench.config.tree_files);
    let local = tempfile::tempdir().expect("temp dir");
    let source = local.path().join("tree");
    let files = build_local_tree(&source, dirs, count);
    let shape = format!("{} files of 1 KiB in {} dirs", thousands(count), thousands(dirs));
    let (raw_put, raw_delete) = raw_tree_times(bench, &files);
    for mode in UPLOAD_MODES {
        let times = copy_and_remove_tree(bench, &source, count, mode);
        let label = upload_mode_label(mode);
        let copy = match mode {
            ON_CLOSE => format!("{:.2} s", secs(times.copy_settled)),
            _ => format!(
                "{:.2} s until uploaded (cp returned after {:.2} s)",
                secs(times.copy_settled),
                secs(times.copy_returned)
            ),
        };
        bench.report.add(
            format!("cp -r of {shape} into the mount, {label}"),
            copy,
            format!("{:.2} s (PutObject, {RAW_SMALL_IN_FLIGHT} in flight)", secs(raw_put)),
            Some(secs(raw_put) / secs(times.copy_settled)),
        );
        let remove = match times.remove_settled > times.remove_returned + Duration::from_millis(100) {
            false => format!("{:.2} s", secs(times.remove_returned)),
            true => format!(
                "{:.2} s until the bucket was empty (rm returned after {:.2} s)",
                secs(times.remove_settled),
                secs(times.remove_returned)
            ),
        };
        bench.report.add(
            format!("rm -r of that tree, {label}"),
            remove,
            format!(
                "{:.2} s (DeleteObject, {RAW_SMALL_IN_FLIGHT} in flight)",
                secs(raw_delete)
            ),
            Some(secs(raw_delete) / secs(times.remove_settled)),
        );
    }
}

/// Builds `dirs` directories with `count` files of 1 KiB spread evenly (6,400 in 1,024:
/// 256 directories of 7 files and 768 of 6, as in geesefs's benchmark). Returns the keys
/// (relative paths, `tree/` included) and bodies.
fn build_local_tree(root: &Path, dirs: usize, count: usize) -> Vec<(String, Bytes)> {
    let mut files = Vec::with_capacity(count);
    for d in 0..dirs {
        let dir = root.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir).expect("local dir");
        let in_this_dir = count / dirs + usize::from(d < count % dirs);
        for f in 0..in_this_dir {
            let body = tree_file_body(d, f);
            std::fs::write(dir.join(format!("f{f}")), &body).expect("local file");
            files.push((format!("tree/d{d:04}/f{f}"), body));
        }
    }
    files
}

/// 1 KiB naming its own path, so no two files have the same contents.
fn tree_file_body(dir: usize, file: usize) -> Bytes {
    let line = format!("d{dir:04}/f{file}\n");
    line.bytes().cycle().take(KIB as usize).collect()
}

struct TreeTimes {
    copy_returned: Duration,
    copy_settled: Duration,
    remove_returned: Duration,
    remove_settled: Duration,
}

/// `cp -r` of the local tree into a fresh mount of a fresh bucket, waiting until every
/// file is in the bucket; then `rm -r` of it, waiting until the bucket is empty.
fn copy_and_remove_tree(bench: &Bench, source: &Path, count: usize, mode: &str) -> TreeTimes {
    let bucket = format!("bench-tree-{mode}");
    bench.server.backend().create_bucket(&bucket);
    let mount = bench.mount(&bucket, &["--upload-mode", mode]);
    let label = upload_mode_label(mode);

    let copy = bench.measure_settled(
        || run_command(Command::new("cp").arg("-r").arg(source).arg(&mount.path)),
        || wait_for_file_count(&bench.server, &bucket, count),
    );
    println!("  cp -r, {label}: {}", copy.requests_text());

    let remove = bench.measure_settled(
        || run_command(Command::new("rm").arg("-r").arg(mount.join("tree"))),
        || wait_for_empty_bucket(&bench.server, &bucket),
    );
    println!("  rm -r, {label}: {}; {}", remove.requests_text(), mount.summary());
    TreeTimes {
        copy_returned: copy.value,
        copy_settled: copy.elapsed,
        remove_returned: remove.value,
        remove_settled: remove.elapsed,
    }
}

/// The raw PutObject and DeleteObject times of the tree's files (no directory markers).
fn raw_tree_times(bench: &Bench, files: &[(String, Bytes)]) -> (Duration, Duration) {
    let bucket = "bench-tree-raw";
    bench.server.backend().create_bucket(bucket);
    let store = bench.store(bucket);
    let put = bench.measure(|| bench.runtime.block_on(put_objects(&store, files, RAW_SMALL_IN_FLIGHT)));
    let keys: Vec<String> = files.iter().map(|(key, _)| key.clone()).collect();
    let delete = bench.measure(|| {
        bench
            .runtime
            .block_on(delete_objects(&store, &keys, RAW_SMALL_IN_FLIGHT))
    });
    println!("  raw: {}; {}", put.requests_text(), delete.requests_text());
    assert!(
        bench.server.backend().keys(bucket).is_empty(),
        "raw deletes removed every key"
    );
    (put.elapsed, delete.elapsed)
}
