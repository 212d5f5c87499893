//! What to run and at which sizes: the workloads named on the command line (or in
//! S3VOL_BENCH_WORKLOADS) and the S3VOL_BENCH_* variables (bench/README.md).

use crate::report::size_text;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
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
    pub const ALL: [Workload; 7] = [
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

    pub fn title(self) -> &'static str {
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

pub struct Config {
    pub workloads: Vec<Workload>,
    /// Size of each big object (sequential and random reads, sequential write).
    pub big_size: u64,
    /// Concurrent sequential readers of the second sequential-read figure.
    pub readers: usize,
    pub random_reads: usize,
    pub random_threads: usize,
    pub ls_files: usize,
    pub small_files: usize,
    pub tree_dirs: usize,
    pub tree_files: usize,
    /// Keys in the directory of the `bigdir` workload, and the --memory-limit of its mount.
    pub bigdir_files: usize,
    pub bigdir_memory_mib: usize,
    /// Extra `s3vol mount` options for every mount (S3VOL_BENCH_MOUNT_ARGS).
    pub mount_args: Vec<String>,
    /// The kernel's readahead for each mount, written to its BDI after mounting
    /// (S3VOL_BENCH_READ_AHEAD_KB, root only); `None` leaves the kernel's choice.
    pub read_ahead_kb: Option<usize>,
}

impl Config {
    /// Workloads from the command line (cargo passes `--bench`, which is skipped) or
    /// S3VOL_BENCH_WORKLOADS (comma-separated); all of them by default.
    pub fn from_env_and_args() -> Config {
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

    pub fn describe(&self) -> String {
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

    pub fn runs_everything(&self) -> bool {
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
