//! Local benchmark of s3vol against its embedded S3 server (issue 3 item 8, issue 4 item 7).
//!
//! `cargo bench --bench local [-- WORKLOAD...]`. It prints figures and asserts nothing
//! about speed: bench/README.md lists the workloads, the environment variables that size
//! them and what every figure means. The table at the end also goes to
//! `bench/results-local.md`.
//!
//! Each figure of s3vol comes with a raw baseline: the same bytes moved by the same S3
//! client (`S3Store`, aws-sdk-s3) straight to the same server, without FUSE. The server
//! runs in this process; its data is put in place through the backend, without HTTP.
//!
//! The parts: `config` (which workloads, their sizes), `harness` (the server, the raw
//! client, mounts, timing, the machine), `report` (the table and the text of figures) and
//! `workloads` (one module per workload).

mod config;
mod harness;
mod report;
mod workloads;

use config::Config;
use harness::Bench;

fn main() {
    let config = Config::from_env_and_args();
    let mut bench = Bench::start(config);
    for workload in bench.config.workloads.clone() {
        println!("\n== {} ==", workload.title());
        workloads::run(workload, &mut bench);
    }
    bench.finish();
}
