//! The benchmark context: the in-process S3 server, the runtime of the raw client, the
//! data of the big objects, timing with the server's request counts, and the report.

pub mod bucket;
pub mod mount;
pub mod raw;
pub mod system;

use crate::config::Config;
use crate::report::{Report, secs, size_text};
use bytes::Bytes;
use mount::Mount;
use s3vol::credentials::StaticCredentials;
use s3vol::provider::{Overrides, Resolved};
use s3vol::server::{RunningServer, ServerConfig, start_blocking};
use s3vol::source::Source;
use s3vol::store::s3::{S3Settings, S3Store};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use system::{cpu_count, kernel_release, load_average};

/// Bucket of the read workloads: the big objects and the directories of many files.
pub const READ_BUCKET: &str = "bench";
/// The big objects are `big0`, `big1`, ... (one per concurrent sequential reader).
const BIG_KEY: &str = "big";

pub struct Bench {
    pub config: Config,
    pub server: RunningServer,
    /// Runs the raw baselines (the server has a runtime of its own).
    pub runtime: tokio::runtime::Runtime,
    /// Contents of every big object. All big objects share this one buffer (Bytes are
    /// reference-counted), so four 1 GiB objects cost 1 GiB of memory.
    pub data: Bytes,
    /// How many big objects are in READ_BUCKET.
    big_objects: usize,
    /// Parallel ranged-GET rate in MiB/s: the baseline of the sequential-read rows.
    pub raw_get_rate: Option<f64>,
    pub report: Report,
}

impl Bench {
    pub fn start(config: Config) -> Bench {
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
    pub fn store(&self, bucket: &str) -> S3Store {
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

    /// A fresh mount of `bucket` with `extra` options and the configured ones.
    pub fn mount(&self, bucket: &str, extra: &[&str]) -> Mount {
        let mount = Mount::new(&self.server, bucket, extra, &self.config.mount_args);
        if let Some(kb) = self.config.read_ahead_kb {
            mount.set_read_ahead_kb(kb);
        }
        mount
    }

    /// Puts `count` big objects into READ_BUCKET (once; MD5 of 1 GiB takes a while).
    pub fn ensure_big_objects(&mut self, count: usize) {
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
    pub fn measure<T>(&self, f: impl FnOnce() -> T) -> Measured<T> {
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

    /// Measures `write` and then `settle` (a wait until the bucket shows what was
    /// written): `elapsed` runs until the bucket settled, `value` is the time until
    /// `write` returned (the same unless the mount defers its uploads).
    pub fn measure_settled(&self, write: impl FnOnce(), settle: impl FnOnce()) -> Measured<Duration> {
        self.measure(|| {
            let started = Instant::now();
            write();
            let returned = started.elapsed();
            settle();
            returned
        })
    }

    pub fn finish(self) {
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

pub struct Measured<T> {
    pub value: T,
    pub elapsed: Duration,
    /// Requests the server received during the measurement, by S3 operation.
    pub requests: BTreeMap<String, u64>,
}

impl<T> Measured<T> {
    pub fn requests_text(&self) -> String {
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

    pub fn count(&self, operation: &str) -> u64 {
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

pub fn big_key(index: usize) -> String {
    format!("{BIG_KEY}{index}")
}

/// Incompressible, deterministic bytes.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Bytes {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut data);
    Bytes::from(data)
}
