//! The workloads, one module each, in the order of bench/README.md, and what several of
//! them share: the I/O buffer, the upload modes, the writer of a file.

mod bigdir;
mod get;
mod ls;
mod random;
mod seq;
mod small;
mod tree;
mod write;

use crate::config::{MIB, Workload};
use crate::harness::Bench;
use std::fs::File;
use std::io::Write;
use std::path::Path;

pub fn run(workload: Workload, bench: &mut Bench) {
    match workload {
        Workload::Get => get::bench_raw_get(bench),
        Workload::Seq => seq::bench_sequential_reads(bench),
        Workload::Random => random::bench_random_reads(bench),
        Workload::Ls => ls::bench_ls(bench),
        Workload::Write => write::bench_sequential_write(bench),
        Workload::Small => small::bench_small_files(bench),
        Workload::Tree => tree::bench_tree(bench),
        Workload::BigDir => bigdir::bench_big_directory(bench),
    }
}

/// Buffer of the sequential reads and writes through the mount, as `dd bs=1M`.
const IO_BUFFER: usize = MIB as usize;
/// Concurrency of the raw PutObject/DeleteObject baselines of many small files.
const RAW_SMALL_IN_FLIGHT: usize = 32;

/// s3vol's upload modes (`--upload-mode`), the default first: `background` (write-back:
/// close() returns once the file is journaled on local disk, the upload follows) and
/// `on-close` (close() waits for the upload).
const UPLOAD_MODES: [&str; 2] = [BACKGROUND, ON_CLOSE];
const BACKGROUND: &str = "background";
const ON_CLOSE: &str = "on-close";

fn upload_mode_label(mode: &str) -> &'static str {
    match mode {
        BACKGROUND => "--upload-mode background (default: write-back)",
        _ => "--upload-mode on-close (close waits for the upload)",
    }
}

/// 1, then `n` if it is more: the single-stream figure and the concurrent one.
fn distinct_counts(n: usize) -> Vec<usize> {
    if n > 1 { vec![1, n] } else { vec![1] }
}

/// Creates `path` and writes `data` to it in `chunk`-sized writes, then closes it and
/// checks close's result (where s3vol reports a failed journal write, or with
/// `--upload-mode on-close` the upload's outcome).
fn write_file(path: &Path, data: &[u8], chunk: usize) {
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    for piece in data.chunks(chunk) {
        file.write_all(piece)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    nix::unistd::close(file).unwrap_or_else(|e| panic!("close {}: {e}", path.display()));
}
