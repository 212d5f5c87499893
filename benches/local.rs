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

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use s3vol::credentials::StaticCredentials;
use s3vol::provider::{Overrides, Resolved};
use s3vol::server::{RunningServer, ServerConfig, start_blocking};
use s3vol::source::Source;
use s3vol::store::s3::{S3Settings, S3Store};
use s3vol::store::{CompletedPart, ObjectStore, PutOptions, StoreResult};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Bucket of the read workloads: the big objects and the directory of many files.
const READ_BUCKET: &str = "bench";
/// The big objects are `big0`, `big1`, ... (one per concurrent sequential reader).
const BIG_KEY: &str = "big";
const MANY_DIR: &str = "many";
/// The directory of the `bigdir` workload.
const BIG_DIR: &str = "bigdir";

/// The raw GET baseline: ranges and parallelism of a well-tuned downloader.
const RAW_RANGE: u64 = 8 * MIB;
const RAW_RANGES_IN_FLIGHT: usize = 8;
/// A second raw GET figure with s3vol's block size and prefetch depth, to tell the cost
/// of many small requests from the cost of FUSE.
const SMALL_RANGE: u64 = MIB;
const SMALL_RANGES_IN_FLIGHT: usize = 64;
/// The raw multipart baseline: the AWS profile's preferred part size.
const RAW_PART: u64 = 16 * MIB;
const RAW_PARTS_IN_FLIGHT: usize = 8;
/// Concurrency of the raw PutObject/DeleteObject baselines of many small files.
const RAW_SMALL_IN_FLIGHT: usize = 32;

/// Size of one read (and of the alignment of its offset) in the random-read workload.
const RANDOM_READ: u64 = 256 * KIB;
/// Buffer of the sequential reads and writes through the mount, as `dd bs=1M`.
const IO_BUFFER: usize = MIB as usize;

/// How long background uploads or deletes may take before the benchmark gives up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);

fn main() {
    let config = Config::from_env_and_args();
    let mut bench = Bench::start(config);
    for workload in bench.config.workloads.clone() {
        println!("\n== {} ==", workload.title());
        match workload {
            Workload::Get => bench_raw_get(&mut bench),
            Workload::Seq => bench_sequential_reads(&mut bench),
            Workload::Random => bench_random_reads(&mut bench),
            Workload::Ls => bench_ls(&mut bench),
            Workload::Write => bench_sequential_write(&mut bench),
            Workload::Small => bench_small_files(&mut bench),
            Workload::Tree => bench_tree(&mut bench),
            Workload::BigDir => bench_big_directory(&mut bench),
        }
    }
    bench.finish();
}

// ---------------------------------------------------------------------------------------
// Configuration

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Get,
    Seq,
    Random,
    Ls,
    Write,
    Small,
    Tree,
    BigDir,
}

impl Workload {
    const ALL: [Workload; 7] = [
        Workload::Get,
        Workload::Seq,
        Workload::Random,
        Workload::Ls,
        Workload::Write,
        Workload::Small,
        Workload::Tree,
    ];
    /// Run only when named: minutes of setup and a lot of server memory.
    const ON_REQUEST: [Workload; 1] = [Workload::BigDir];

    fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Seq => "seq",
            Workload::Random => "random",
            Workload::Ls => "ls",
            Workload::Write => "write",
            Workload::Small => "small",
            Workload::Tree => "tree",
            Workload::BigDir => "bigdir",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Workload::Get => "raw GET throughput (no mount)",
            Workload::Seq => "sequential reads through the mount",
            Workload::Random => "random 256 KiB reads through the mount",
            Workload::Ls => "ls -l of a large directory",
            Workload::Write => "sequential write through the mount",
            Workload::Small => "create+write of small files",
            Workload::Tree => "cp -r and rm -r of a tree of small files",
            Workload::BigDir => "a directory of a million keys: listing and the daemon's memory",
        }
    }

    fn parse(name: &str) -> Workload {
        Workload::ALL
            .into_iter()
            .chain(Workload::ON_REQUEST)
            .find(|w| w.name() == name)
            .unwrap_or_else(|| panic!("unknown workload {name:?}; known: {}", Workload::names()))
    }

    fn names() -> String {
        Workload::ALL
            .into_iter()
            .chain(Workload::ON_REQUEST)
            .map(Workload::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Config {
    workloads: Vec<Workload>,
    /// Size of each big object (sequential and random reads, sequential write).
    big_size: u64,
    /// Concurrent sequential readers of the second sequential-read figure.
    readers: usize,
    random_reads: usize,
    random_threads: usize,
    ls_files: usize,
    small_files: usize,
    tree_dirs: usize,
    tree_files: usize,
    /// Keys in the directory of the `bigdir` workload, and the --memory-limit of its mount.
    bigdir_files: usize,
    bigdir_memory_mib: usize,
    /// Extra `s3vol mount` options for every mount (S3VOL_BENCH_MOUNT_ARGS).
    mount_args: Vec<String>,
    /// The kernel's readahead for each mount, written to its BDI after mounting
    /// (S3VOL_BENCH_READ_AHEAD_KB, root only); `None` leaves the kernel's choice.
    read_ahead_kb: Option<usize>,
}

impl Config {
    /// Workloads from the command line (cargo passes `--bench`, which is skipped) or
    /// S3VOL_BENCH_WORKLOADS (comma-separated); all of them by default.
    fn from_env_and_args() -> Config {
        let mut names: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
        if names.is_empty() {
            let listed = std::env::var("S3VOL_BENCH_WORKLOADS").unwrap_or_default();
            names = listed.split(',').filter(|n| !n.is_empty()).map(str::to_owned).collect();
        }
        let workloads = match names.is_empty() {
            true => Workload::ALL.to_vec(),
            false => names.iter().map(|n| Workload::parse(n)).collect(),
        };
        let mount_args = std::env::var("S3VOL_BENCH_MOUNT_ARGS").unwrap_or_default();
        Config {
            workloads,
            big_size: env_number("S3VOL_BENCH_SIZE_MIB", 1024) as u64 * MIB,
            readers: env_number("S3VOL_BENCH_READERS", 4).max(1),
            random_reads: env_number("S3VOL_BENCH_RANDOM_READS", 2000),
            random_threads: env_number("S3VOL_BENCH_RANDOM_THREADS", 4).max(1),
            ls_files: env_number("S3VOL_BENCH_LS_FILES", 10_000),
            small_files: env_number("S3VOL_BENCH_SMALL_FILES", 2000),
            tree_dirs: env_number("S3VOL_BENCH_TREE_DIRS", 1024).max(1),
            tree_files: env_number("S3VOL_BENCH_TREE_FILES", 6400),
            bigdir_files: env_number("S3VOL_BENCH_BIGDIR_FILES", 1_000_000),
            bigdir_memory_mib: env_number("S3VOL_BENCH_BIGDIR_MEMORY_MIB", 256).max(1),
            mount_args: mount_args.split_whitespace().map(str::to_owned).collect(),
            read_ahead_kb: std::env::var("S3VOL_BENCH_READ_AHEAD_KB")
                .ok()
                .map(|_| env_number("S3VOL_BENCH_READ_AHEAD_KB", 0)),
        }
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "big object {}, {} sequential readers, {} random reads ({} threads), {} files for ls -l, \
             {} small files, tree of {} files in {} dirs",
            size_text(self.big_size),
            self.readers,
            self.random_reads,
            self.random_threads,
            self.ls_files,
            self.small_files,
            self.tree_files,
            self.tree_dirs,
        );
        if !self.mount_args.is_empty() {
            text += &format!(", mount options `{}`", self.mount_args.join(" "));
        }
        if let Some(kb) = self.read_ahead_kb {
            text += &format!(", read_ahead_kb {kb}");
        }
        if self.workloads.contains(&Workload::BigDir) {
            text += &format!(
                ", bigdir of {} keys at --memory-limit {} MiB",
                self.bigdir_files, self.bigdir_memory_mib
            );
        }
        text
    }

    fn runs_everything(&self) -> bool {
        self.workloads == Workload::ALL
    }
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------
// The benchmark context: server, client runtime, data, results

struct Bench {
    config: Config,
    server: RunningServer,
    /// Runs the raw baselines (the server has a runtime of its own).
    runtime: tokio::runtime::Runtime,
    /// Contents of every big object. All big objects share this one buffer (Bytes are
    /// reference-counted), so four 1 GiB objects cost 1 GiB of memory.
    data: Bytes,
    /// How many big objects are in READ_BUCKET.
    big_objects: usize,
    /// Parallel ranged-GET rate in MiB/s: the baseline of the sequential-read rows.
    raw_get_rate: Option<f64>,
    report: Report,
}

impl Bench {
    fn start(config: Config) -> Bench {
        println!("s3vol local benchmark: {}", config.describe());
        println!(
            "machine: {} CPUs, kernel {}, load average {}",
            cpu_count(),
            kernel_release(),
            load_average()
        );
        let server = start_blocking(ServerConfig {
            min_part_size: 0,
            ..ServerConfig::default()
        });
        server.backend().create_bucket(READ_BUCKET);
        println!("server: {}", server.endpoint);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("client runtime");
        let started = Instant::now();
        let data = pseudo_random_bytes(config.big_size as usize, 0x5eed);
        println!(
            "generated {} of data in {:.1} s",
            size_text(config.big_size),
            secs(started.elapsed())
        );
        Bench {
            config,
            server,
            runtime,
            data,
            big_objects: 0,
            raw_get_rate: None,
            report: Report::default(),
        }
    }

    /// A client of `bucket` on the server, as `s3vol mount` would build it.
    fn store(&self, bucket: &str) -> S3Store {
        let source = Source::parse(&format!("s3://{bucket}")).expect("source");
        let overrides = Overrides {
            endpoint_url: Some(self.server.endpoint.clone()),
            force_path_style: true,
            region: Some("us-east-1".into()),
            ..Overrides::default()
        };
        let settings = S3Settings {
            credentials: Some(StaticCredentials {
                access_key: self.server.access_key.clone(),
                secret_key: self.server.secret_key.clone(),
                session_token: None,
            }),
            ..S3Settings::default()
        };
        let resolved = Resolved::new(&source, &overrides);
        self.runtime
            .block_on(S3Store::connect(&resolved, settings))
            .expect("S3 client")
    }

    fn mount(&self, bucket: &str, extra: &[&str]) -> Mount {
        let mount = Mount::new(&self.server, bucket, extra, &self.config.mount_args);
        if let Some(kb) = self.config.read_ahead_kb {
            mount.set_read_ahead_kb(kb);
        }
        mount
    }

    /// Puts `count` big objects into READ_BUCKET (once; MD5 of 1 GiB takes a while).
    fn ensure_big_objects(&mut self, count: usize) {
        let started = Instant::now();
        while self.big_objects < count {
            let key = big_key(self.big_objects);
            self.server
                .backend()
                .put_object(READ_BUCKET, &key, self.data.clone(), &[])
                .expect("bucket");
            self.big_objects += 1;
        }
        println!("big objects in place: {count} ({:.1} s)", secs(started.elapsed()));
    }

    /// Runs `f` and reports how long it took and which requests reached the server.
    fn measure<T>(&self, f: impl FnOnce() -> T) -> Measured<T> {
        let before = self.server.stats().snapshot();
        let started = Instant::now();
        let value = f();
        let elapsed = started.elapsed();
        let requests = request_delta(&before, &self.server.stats().snapshot());
        Measured {
            value,
            elapsed,
            requests,
        }
    }

    /// The parallel ranged-GET rate, measured once.
    fn raw_get_rate(&mut self) -> f64 {
        if self.raw_get_rate.is_none() {
            bench_raw_get(self);
        }
        self.raw_get_rate.expect("measured")
    }

    fn finish(self) {
        let markdown = self.report.markdown(&self.config);
        println!("\n{markdown}");
        if !self.config.runs_everything() {
            println!("(only some workloads ran: bench/results-local.md left as it was)");
            return;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results-local.md");
        match std::fs::write(&path, &markdown) {
            Ok(()) => println!("written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

struct Measured<T> {
    value: T,
    elapsed: Duration,
    /// Requests the server received during the measurement, by S3 operation.
    requests: BTreeMap<String, u64>,
}

impl<T> Measured<T> {
    fn requests_text(&self) -> String {
        match self.requests.is_empty() {
            true => "no requests".to_owned(),
            false => self
                .requests
                .iter()
                .map(|(op, n)| format!("{op} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn count(&self, operation: &str) -> u64 {
        self.requests.get(operation).copied().unwrap_or(0)
    }
}

fn request_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Report

struct Row {
    workload: String,
    s3vol: String,
    raw: String,
    /// s3vol's rate divided by the raw rate (equivalently raw time / s3vol time):
    /// 1.0 is parity, 0.5 is half as fast.
    ratio: Option<f64>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        workload: impl Into<String>,
        s3vol: impl Into<String>,
        raw: impl Into<String>,
        ratio: Option<f64>,
    ) {
        let row = Row {
            workload: workload.into(),
            s3vol: s3vol.into(),
            raw: raw.into(),
            ratio,
        };
        println!(
            "  -> {}: s3vol {} | raw {} | ratio {}",
            row.workload,
            row.s3vol,
            row.raw,
            ratio_text(ratio)
        );
        self.rows.push(row);
    }

    fn markdown(&self, config: &Config) -> String {
        let mut out = String::from("# s3vol local benchmark\n\n");
        out += &format!(
            "`cargo bench --bench local` on {} CPUs, kernel {}, load average {} at the end; {}.\n\
             Ratio: s3vol's rate / the raw rate (1.00 = parity). See bench/README.md.\n\n",
            cpu_count(),
            kernel_release(),
            load_average(),
            config.describe()
        );
        out += "| workload | s3vol | raw baseline | ratio |\n|---|---|---|---|\n";
        for row in &self.rows {
            out += &format!(
                "| {} | {} | {} | {} |\n",
                row.workload,
                row.s3vol,
                row.raw,
                ratio_text(row.ratio)
            );
        }
        out
    }
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

// ---------------------------------------------------------------------------------------
// 1. Raw GET: what the client and server do without FUSE

fn bench_raw_get(bench: &mut Bench) {
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

/// GETs every range with `in_flight` requests at once; returns the bytes received.
/// Bodies are counted and dropped, not copied: the baseline is the transfer alone.
async fn get_ranges(store: &S3Store, key: &str, ranges: &[Range<u64>], in_flight: usize) -> u64 {
    futures::stream::iter(ranges.iter().cloned())
        .map(|range| get_and_count(store, key, range))
        .buffer_unordered(in_flight)
        .try_fold(0, |total, n| async move { Ok(total + n) })
        .await
        .expect("raw GET")
}

async fn get_and_count(store: &S3Store, key: &str, range: Range<u64>) -> StoreResult<u64> {
    let mut body = store.get_range(key, range, None).await?.body;
    let mut received = 0;
    while let Some(chunk) = body.next().await {
        received += chunk?.len() as u64;
    }
    Ok(received)
}

fn split_ranges(size: u64, step: u64) -> Vec<Range<u64>> {
    (0..size)
        .step_by(step as usize)
        .map(|start| start..(start + step).min(size))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 2. Sequential reads through the mount, cold

fn bench_sequential_reads(bench: &mut Bench) {
    let raw_rate = bench.raw_get_rate();
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

// ---------------------------------------------------------------------------------------
// 3. Random 256 KiB reads through the mount, cold

fn bench_random_reads(bench: &mut Bench) {
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

// ---------------------------------------------------------------------------------------
// 4. ls -l of a large directory

fn bench_ls(bench: &mut Bench) {
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
    let output = Command::new("ls").arg("-l").arg(dir).output().expect("run ls");
    assert!(
        output.status.success(),
        "ls -l failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.iter().filter(|&&b| b == b'\n').count()
}

/// Lists every key under `prefix`, page by page; returns how many there are.
async fn list_all(store: &S3Store, prefix: &str) -> usize {
    let mut request = s3vol::store::ListRequest {
        prefix: prefix.to_owned(),
        delimiter: Some("/".to_owned()),
        ..Default::default()
    };
    let mut count = 0;
    loop {
        let page = store.list_page(&request).await.expect("LIST");
        count += page.objects.len();
        match page.next {
            Some(next) => request.continuation = Some(next),
            None => return count,
        }
    }
}

// ---------------------------------------------------------------------------------------
// 5. Sequential write through the mount

fn bench_sequential_write(bench: &mut Bench) {
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

async fn multipart_upload(store: &S3Store, key: &str, data: &Bytes, part: u64, in_flight: usize) {
    let upload_id = store
        .create_multipart(key, &PutOptions::default())
        .await
        .expect("create multipart");
    let parts = split_ranges(data.len() as u64, part)
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let body = data.slice(range.start as usize..range.end as usize);
            store.upload_part(key, &upload_id, i as i32 + 1, body)
        });
    let mut completed: Vec<CompletedPart> = futures::stream::iter(parts)
        .buffer_unordered(in_flight)
        .try_collect()
        .await
        .expect("upload part");
    completed.sort_by_key(|p| p.number);
    store
        .complete_multipart(key, &upload_id, &completed, None)
        .await
        .expect("complete multipart");
}

fn expect_object_size(server: &RunningServer, bucket: &str, key: &str, size: u64) {
    let object = server.backend().get_object(bucket, key);
    let stored = object.map(|o| o.body.len());
    assert_eq!(stored, Some(size), "{bucket}/{key} was uploaded whole");
}

// ---------------------------------------------------------------------------------------
// 6. Create+write of many small files

fn bench_small_files(bench: &mut Bench) {
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
    let run = bench.measure(|| {
        for (name, body) in files {
            write_file(&mount.join(name), body, IO_BUFFER);
        }
        let returned = Instant::now();
        wait_for_file_count(&bench.server, bucket, files.len());
        returned.elapsed()
    });
    let returned = run.elapsed - run.value;
    println!(
        "  {}: {}; {}",
        upload_mode_label(mode),
        run.requests_text(),
        mount.summary()
    );
    drop(mount);
    empty_bucket(&bench.server, bucket);
    (returned, run.elapsed)
}

/// PutObject of every file with `in_flight` at once, into a fresh bucket; returns PUT/s.
fn raw_put_rate(bench: &Bench, bucket: &str, files: &[(String, Bytes)], in_flight: usize) -> f64 {
    bench.server.backend().create_bucket(bucket);
    let store = bench.store(bucket);
    let run = bench.measure(|| bench.runtime.block_on(put_objects(&store, files, in_flight)));
    empty_bucket(&bench.server, bucket);
    per_sec(files.len() as u64, run.elapsed)
}

async fn put_objects(store: &S3Store, files: &[(String, Bytes)], in_flight: usize) {
    let options = PutOptions::default();
    futures::stream::iter(files)
        .map(|(key, body)| store.put(key, body.clone(), &options))
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("PutObject");
}

async fn delete_objects(store: &S3Store, keys: &[String], in_flight: usize) {
    futures::stream::iter(keys)
        .map(|key| store.delete(key))
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("DeleteObject");
}

// ---------------------------------------------------------------------------------------
// 7. cp -r and rm -r of a tree of small files

/// Issue 20 item 7: `ls -f` and then `find` of one directory of `bigdir_files` empty
/// objects, on a mount with a small --memory-limit. The figures are the daemon's peak RSS
/// against that limit and what each listed entry costs it (RSS growth / entries).
fn bench_big_directory(bench: &mut Bench) {
    let files = bench.config.bigdir_files;
    let limit_mib = bench.config.bigdir_memory_mib as u64;
    let started = Instant::now();
    for i in 0..files {
        let key = format!("{BIG_DIR}/k{i:07}");
        bench
            .server
            .backend()
            .put_object(READ_BUCKET, &key, Bytes::new(), &[])
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
    let idle = process_rss(pid, "VmRSS:").expect("daemon alive");
    let dir = mount.join(BIG_DIR);
    // `ls -f` reads the directory without sorting or a stat per entry; it prints . and ..
    let ls = bench.measure(|| output_lines(Command::new("ls").arg("-f").arg(&dir)));
    assert_eq!(ls.value, files + 2, "ls -f lists every key once, plus . and ..");
    let after_ls = process_rss(pid, "VmHWM:").expect("daemon alive");
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
    let peak = process_rss(pid, "VmHWM:").expect("daemon alive");
    let now = process_rss(pid, "VmRSS:").expect("daemon alive");
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
        bench
            .server
            .backend()
            .delete_object(READ_BUCKET, &format!("{BIG_DIR}/k{i:07}"));
    }
}

/// Runs `command`; returns the number of lines it printed.
fn output_lines(command: &mut Command) -> usize {
    let output = command.output().expect("run the command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.iter().filter(|&&b| b == b'\n').count()
}

fn bench_tree(bench: &mut Bench) {
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

    let copy = bench.measure(|| {
        run_command(Command::new("cp").arg("-r").arg(source).arg(&mount.path));
        let returned = Instant::now();
        wait_for_file_count(&bench.server, &bucket, count);
        returned.elapsed()
    });
    println!("  cp -r, {label}: {}", copy.requests_text());

    let remove = bench.measure(|| {
        run_command(Command::new("rm").arg("-r").arg(mount.join("tree")));
        let returned = Instant::now();
        wait_for_empty_bucket(&bench.server, &bucket);
        returned.elapsed()
    });
    println!("  rm -r, {label}: {}; {}", remove.requests_text(), mount.summary());
    TreeTimes {
        copy_returned: copy.elapsed - copy.value,
        copy_settled: copy.elapsed,
        remove_returned: remove.elapsed - remove.value,
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

fn run_command(command: &mut Command) {
    let status = command.status().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(status.success(), "{command:?} failed: {status}");
}

// ---------------------------------------------------------------------------------------
// Waiting for background work, in the bucket itself

/// Waits until the bucket holds `count` objects that are not directory markers.
fn wait_for_file_count(server: &RunningServer, bucket: &str, count: usize) {
    wait_for(server, bucket, |keys| {
        keys.iter().filter(|k| !k.ends_with('/')).count() >= count
    });
}

fn wait_for_empty_bucket(server: &RunningServer, bucket: &str) {
    wait_for(server, bucket, |keys| keys.is_empty());
}

fn wait_for(server: &RunningServer, bucket: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let keys = server.backend().keys(bucket);
        if done(&keys) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{bucket}: still {} keys after {SETTLE_TIMEOUT:?}",
            keys.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn empty_bucket(server: &RunningServer, bucket: &str) {
    for key in server.backend().keys(bucket) {
        server.backend().delete_object(bucket, &key);
    }
}

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

// ---------------------------------------------------------------------------------------
// A real mount of a bucket, undone on drop (also on panic)

struct Mount {
    path: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// `s3vol mount -f s3://BUCKET` in a child process; returns once the mount is live.
    fn new(server: &RunningServer, bucket: &str, extra: &[&str], configured: &[String]) -> Mount {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mountpoint");
        let log = dir.path().join("s3vol.log");
        let child = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .arg("mount")
            .arg(format!("s3://{bucket}"))
            .arg(&path)
            .args([
                "-f",
                "--endpoint-url",
                &server.endpoint,
                "--force-path-style",
                "--region",
                "us-east-1",
            ])
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(extra)
            .args(configured)
            .env("AWS_ACCESS_KEY_ID", &server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start s3vol");
        let mut mount = Mount {
            path,
            log,
            child: Some(child),
            _dir: dir,
        };
        mount.wait_until_live();
        mount
    }

    fn wait_until_live(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.path) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("s3vol exited with {status} before mounting:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "no mount after 30 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn join(&self, relative: &str) -> PathBuf {
        self.path.join(relative)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's peak RSS, its block cache figures (`s3vol status`) and the warnings it
    /// logged so far: the evidence behind a figure.
    fn summary(&self) -> String {
        let peak = self.child.as_ref().and_then(|c| peak_rss(c.id()));
        let mut text = format!("daemon peak RSS {}", peak.map_or_else(|| "?".to_owned(), size_text));
        if let Some(status) = self.status() {
            text += &format!("; {}", status_text(&status));
        }
        let log = self.log_text();
        let mut problems = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR"));
        match problems.next() {
            None => text += "; no warnings",
            Some(first) => {
                text += &format!(
                    "; {} warning/error lines, first: {}",
                    1 + problems.count(),
                    first.trim()
                )
            }
        }
        text
    }

    /// Sets the kernel's readahead of this mount (its BDI is named after the mount's
    /// device number). The kernel caps a FUSE mount's readahead at its default (128 KiB)
    /// whatever max_readahead the daemon asks for; this shows what a larger one gives.
    fn set_read_ahead_kb(&self, kb: usize) {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&self.path).expect("mountpoint").dev();
        let bdi = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
        if let Err(e) = std::fs::write(&bdi, kb.to_string()) {
            println!("  cannot set {bdi}: {e}");
        }
    }

    /// `s3vol status --json` of this mount, if the daemon answers.
    fn status(&self) -> Option<serde_json::Value> {
        let output = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .args(["status", "--json"])
            .arg(&self.path)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let mounts: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        mounts.get(0).cloned()
    }

    /// Unmounts (lazily if asked, as when a panic may leave files open), waits for the
    /// daemon, and kills it, by its PID, only if it does not exit.
    fn stop(&mut self, lazy_first: bool) {
        if lazy_first {
            fusermount(&self.path, true);
        }
        fusermount(&self.path, false);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    eprintln!("s3vol (pid {}) did not exit after unmount; killing it", child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        fusermount(&self.path, true);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("--- s3vol log ---\n{}", self.log_text());
        }
        self.stop(panicking);
    }
}

fn fusermount(path: &Path, lazy: bool) {
    if is_mounted(path) {
        let mut command = Command::new("fusermount3");
        command.arg("-u");
        if lazy {
            command.arg("-z");
        }
        let _ = command.arg(path).status();
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(wanted.as_str()))
}

/// The block cache's figures from `s3vol status`: bytes fetched from the bucket (against
/// bytes read, the read amplification), the memory cache's hit rate and fill, and what
/// the disk cache holds.
fn status_text(status: &serde_json::Value) -> String {
    let field = |name: &str| status.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
    format!(
        "status: fetched {}, cache {} hits / {} misses, {} of {} cached; disk cache {} of {}",
        size_text(field("fetched_bytes")),
        field("cache_hits"),
        field("cache_misses"),
        size_text(field("cache_bytes")),
        size_text(field("cache_budget")),
        size_text(field("disk_bytes")),
        size_text(field("disk_budget")),
    )
}

/// VmHWM of a process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    process_rss(pid, "VmHWM:")
}

/// A memory figure of /proc/PID/status (`VmHWM:` peak RSS, `VmRSS:` RSS now), in bytes.
fn process_rss(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

/// Empties the kernel page cache where allowed (root). Reads are cold anyway: every read
/// figure uses a fresh mount, and a fresh FUSE mount starts without cached pages; this
/// also evicts the local tree and anything else between runs.
fn drop_page_cache() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// 1, then `n` if it is more: the single-stream figure and the concurrent one.
fn distinct_counts(n: usize) -> Vec<usize> {
    if n > 1 { vec![1, n] } else { vec![1] }
}

fn big_key(index: usize) -> String {
    format!("{BIG_KEY}{index}")
}

/// Incompressible, deterministic bytes.
fn pseudo_random_bytes(len: usize, seed: u64) -> Bytes {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut data);
    Bytes::from(data)
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn per_sec(count: u64, elapsed: Duration) -> f64 {
    count as f64 / secs(elapsed).max(1e-9)
}

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    per_sec(bytes, elapsed) / MIB as f64
}

fn rate_text(mib_per_sec: f64) -> String {
    format!("{mib_per_sec:.0} MiB/s")
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= MIB => format!("{:.0} MiB", b as f64 / MIB as f64),
        b => format!("{} KiB", b / KIB),
    }
}

/// 10000 -> "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The 1, 5 and 15 minute load averages: other work on the machine moves every figure.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
