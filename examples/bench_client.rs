//! The measuring side of the WAN benchmark (`bench/run`), one subcommand per step:
//!
//! - raw S3 baselines with s3vol's own aws-sdk client (`S3Store`), straight to the server
//!   over the same link as the mounts: `get`, `get-random`, `ttfb`, `put-big`,
//!   `put-latency`, `put-dir`, `get-prefix`, `delete-prefix`, `list`;
//! - helpers the harness needs: `wait-object` and `wait-count` (poll the bucket until a
//!   write is really there, so asynchronous uploaders are timed to the end), and
//!   `populate` (set up a bucket);
//! - timed syscalls on a mount, where the shell or fio cannot time them precisely:
//!   `file-ttfb`, `close-latency`, `write-file`, `make-files`, `make-tree`.
//!
//! Every subcommand prints one JSON object on stdout (`seconds` is always there). S3
//! subcommands read `BENCH_ENDPOINT`, `BENCH_BUCKET`, `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` from the environment, and `BENCH_CA_BUNDLE` for an https endpoint
//! that a private CA's certificate serves. Data is deterministic (seeded), so
//! every tool moves the same bytes.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use s3vol::credentials::StaticCredentials;
use s3vol::provider::{Overrides, Resolved};
use s3vol::source::Source;
use s3vol::store::CaBundle;
use s3vol::store::s3::{S3Settings, S3Store};
use s3vol::store::{CompletedPart, ListRequest, ObjectStore, PutOptions, StoreResult};
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        usage();
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let output = match (command.as_str(), rest.as_slice()) {
        // Raw S3 baselines.
        ("get", [key, part_mib, in_flight, copies]) => {
            block_on(raw_get(key, num::<u64>(part_mib) * MIB, num(in_flight), num(copies)))
        }
        ("get-random", [key, block_kib, in_flight, seconds]) => block_on(raw_get_random(
            key,
            num::<u64>(block_kib) * 1024,
            num(in_flight),
            Duration::from_secs(num(seconds)),
        )),
        ("ttfb", [key]) => block_on(raw_ttfb(key)),
        ("put-big", [key, size_mib, part_mib, in_flight]) => block_on(raw_put_big(
            key,
            num::<u64>(size_mib) * MIB,
            num::<u64>(part_mib) * MIB,
            num(in_flight),
        )),
        ("put-latency", [prefix, count]) => block_on(raw_put_latency(prefix, num(count), 1)),
        ("put-latency", [prefix, count, size]) => block_on(raw_put_latency(prefix, num(count), num(size))),
        ("put-dir", [dir, prefix, in_flight]) => block_on(raw_put_dir(Path::new(dir), prefix, num(in_flight))),
        ("get-prefix", [prefix, in_flight, seed]) => block_on(raw_get_prefix(prefix, num(in_flight), num(seed))),
        ("delete-prefix", [prefix, in_flight]) => block_on(raw_delete_prefix(prefix, num(in_flight))),
        ("list", [prefix, delimiter]) => block_on(raw_list(prefix, *delimiter == "1")),
        // Harness helpers.
        ("wait-object", [key, size, timeout]) => block_on(wait_object(
            key,
            num(size),
            Duration::from_secs(num(timeout)),
            Duration::from_millis(100),
        )),
        ("wait-object", [key, size, timeout, every_ms]) => block_on(wait_object(
            key,
            num(size),
            Duration::from_secs(num(timeout)),
            Duration::from_millis(num(every_ms)),
        )),
        ("wait-count", [prefix, count, timeout]) => {
            block_on(wait_count(prefix, num(count), Duration::from_secs(num(timeout))))
        }
        // Timed syscalls on a mount.
        ("file-ttfb", [path]) => file_ttfb(Path::new(path)),
        ("close-latency", [dir, count]) => close_latency(Path::new(dir), num(count)),
        ("write-file", [path, size_mib]) => write_file(Path::new(path), num::<u64>(size_mib) * MIB),
        ("make-files", [dir, count, min_kib, max_kib]) => make_files(
            Path::new(dir),
            num(count),
            num::<u64>(min_kib) * 1024,
            num::<u64>(max_kib) * 1024,
        ),
        ("make-tree", [dir, dirs, files, file_size]) => {
            make_tree(Path::new(dir), num(dirs), num(files), num(file_size))
        }
        ("make-find-tree", [dir, top, sub, files]) => make_find_tree(Path::new(dir), num(top), num(sub), num(files)),
        _ => usage(),
    };
    println!("{output}");
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_client COMMAND ARGS (see the list at the top of examples/bench_client.rs)\n\
         get KEY PART_MIB IN_FLIGHT COPIES | get-random KEY BLOCK_KIB IN_FLIGHT SECONDS | ttfb KEY\n\
         put-big KEY SIZE_MIB PART_MIB IN_FLIGHT | put-latency PREFIX COUNT [SIZE] | put-dir DIR PREFIX IN_FLIGHT\n\
         get-prefix PREFIX IN_FLIGHT SEED | delete-prefix PREFIX IN_FLIGHT | list PREFIX DELIMITER(0|1)\n\
         wait-object KEY SIZE TIMEOUT_S [EVERY_MS] | wait-count PREFIX COUNT TIMEOUT_S\n\
         file-ttfb PATH | close-latency DIR COUNT | write-file PATH SIZE_MIB\n\
         make-files DIR COUNT MIN_KIB MAX_KIB | make-tree DIR DIRS FILES FILE_SIZE | make-find-tree DIR TOP SUB FILES"
    );
    exit(2)
}

fn num<T: std::str::FromStr>(text: &str) -> T {
    text.parse().unwrap_or_else(|_| {
        eprintln!("bench_client: not a number: {text:?}");
        exit(2)
    })
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("bench_client: {what}");
    exit(1)
}

fn block_on<F: std::future::Future<Output = Value>>(future: F) -> Value {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("tokio runtime: {e}")))
        .block_on(future)
}

// ---------------------------------------------------------------------------------------
// Raw S3 with aws-sdk (S3Store), the baseline of every workload

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| fail(format!("{name} is not set")))
}

/// A client built as `s3vol mount` builds its own, so the baseline differs from s3vol by
/// FUSE and by s3vol's own logic only.
async fn store() -> S3Store {
    let source = Source::parse(&format!("s3://{}", env("BENCH_BUCKET"))).unwrap_or_else(|e| fail(e));
    let overrides = Overrides {
        endpoint_url: Some(env("BENCH_ENDPOINT")),
        force_path_style: true,
        region: Some("us-east-1".into()),
        ..Overrides::default()
    };
    let settings = S3Settings {
        credentials: Some(StaticCredentials {
            access_key: env("AWS_ACCESS_KEY_ID"),
            secret_key: env("AWS_SECRET_ACCESS_KEY"),
            session_token: None,
        }),
        // The baseline is a plain aws-sdk client: its GETs and HEADs too.
        sdk_reads: true,
        ca_bundle: std::env::var_os("BENCH_CA_BUNDLE")
            .map(|path| CaBundle::load(Path::new(&path)).unwrap_or_else(|e| fail(e))),
        ..S3Settings::default()
    };
    S3Store::connect(&Resolved::new(&source, &overrides), settings)
        .await
        .unwrap_or_else(|e| fail(format!("S3 client: {e}")))
}

fn split_ranges(size: u64, step: u64) -> Vec<Range<u64>> {
    (0..size)
        .step_by(step as usize)
        .map(|start| start..(start + step).min(size))
        .collect()
}

/// GETs `range`; the body is counted and dropped: the baseline is the transfer alone.
async fn get_and_count(store: &S3Store, key: &str, range: Range<u64>) -> StoreResult<u64> {
    let mut body = store.get_range(key, range, None).await?.body;
    let mut received = 0;
    while let Some(chunk) = body.next().await {
        received += chunk?.len() as u64;
    }
    Ok(received)
}

/// The whole object `copies` times (as that many readers without a shared cache would
/// fetch it) in `part`-sized ranged GETs, `in_flight` at once in all.
async fn raw_get(key: &str, part: u64, in_flight: usize, copies: usize) -> Value {
    let store = store().await;
    let size = store
        .head(key)
        .await
        .unwrap_or_else(|e| fail(format!("HEAD {key}: {e}")))
        .size;
    let ranges: Vec<Range<u64>> = (0..copies).flat_map(|_| split_ranges(size, part)).collect();
    let requests = ranges.len();
    let started = Instant::now();
    let bytes: u64 = futures::stream::iter(ranges)
        .map(|range| get_and_count(&store, key, range))
        .buffer_unordered(in_flight)
        .try_fold(0, |total, n| async move { Ok(total + n) })
        .await
        .unwrap_or_else(|e| fail(format!("GET {key}: {e}")));
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "bytes": bytes, "requests": requests, "mib_per_s": bytes as f64 / MIB as f64 / seconds})
}

/// Ranged GETs of `block` bytes at random aligned offsets, `in_flight` at once, for
/// `duration`; the same access pattern as fio's randread on a mount.
async fn raw_get_random(key: &str, block: u64, in_flight: usize, duration: Duration) -> Value {
    let store = store().await;
    let size = store
        .head(key)
        .await
        .unwrap_or_else(|e| fail(format!("HEAD {key}: {e}")))
        .size;
    let blocks = (size / block).max(1);
    let mut order: Vec<u64> = (0..blocks).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut order);
    let started = Instant::now();
    let deadline = started + duration;
    let mut next = order.into_iter().cycle();
    let mut reads = 0u64;
    let mut bytes = 0u64;
    let mut in_progress = futures::stream::FuturesUnordered::new();
    loop {
        while in_progress.len() < in_flight && Instant::now() < deadline {
            let index = next.next().unwrap_or(0);
            let range = index * block..(index + 1) * block;
            in_progress.push(get_and_count(&store, key, range));
        }
        match in_progress.next().await {
            Some(result) => {
                bytes += result.unwrap_or_else(|e| fail(format!("GET {key}: {e}")));
                reads += 1;
            }
            None => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "reads": reads, "bytes": bytes, "iops": reads as f64 / seconds,
           "mib_per_s": bytes as f64 / MIB as f64 / seconds})
}

/// Time to the first body byte of a GET on a warm connection (a HEAD opens it first, as
/// a mount has its connection open by the time a file is read). Also gives the HEAD time,
/// a plain round trip of the stack.
async fn raw_ttfb(key: &str) -> Value {
    let store = store().await;
    let started = Instant::now();
    store
        .head(key)
        .await
        .unwrap_or_else(|e| fail(format!("HEAD {key}: {e}")));
    let head_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut body = store
        .get_range(key, 0..MIB, None)
        .await
        .unwrap_or_else(|e| fail(format!("GET {key}: {e}")))
        .body;
    let first = body.next().await;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(Err(e)) = first {
        fail(format!("GET {key}: {e}"));
    }
    json!({"seconds": seconds, "head_seconds_cold_connection": head_seconds})
}

/// Deterministic, incompressible-looking data: a 16 MiB seeded block, each MiB of the
/// output tagged with its index so no two MiB are equal.
fn generated(size: u64) -> Vec<u8> {
    let mut pattern = vec![0u8; (16 * MIB) as usize];
    fastrand::Rng::with_seed(42).fill(&mut pattern);
    let mut data = Vec::with_capacity(size as usize);
    let mut index = 0u64;
    while (data.len() as u64) < size {
        let take = ((size - data.len() as u64).min(MIB)) as usize;
        let offset = ((index % 16) * MIB) as usize;
        let start = data.len();
        data.extend_from_slice(&pattern[offset..offset + take]);
        let tag = index.to_le_bytes();
        let n = tag.len().min(take);
        data[start..start + n].copy_from_slice(&tag[..n]);
        index += 1;
    }
    data
}

/// A multipart upload (or one PutObject if it fits in a part).
async fn raw_put_big(key: &str, size: u64, part: u64, in_flight: usize) -> Value {
    let store = store().await;
    let data = Bytes::from(generated(size));
    let started = Instant::now();
    let requests;
    let mut complete_seconds = 0.0;
    if size <= part {
        store
            .put(key, data, &PutOptions::default())
            .await
            .unwrap_or_else(|e| fail(format!("PUT {key}: {e}")));
        requests = 1;
    } else {
        let upload_id = store
            .create_multipart(key, &PutOptions::default())
            .await
            .unwrap_or_else(|e| fail(format!("CreateMultipartUpload {key}: {e}")));
        let ranges = split_ranges(size, part);
        requests = ranges.len() + 2;
        let parts = ranges.into_iter().enumerate().map(|(i, range)| {
            let body = data.slice(range.start as usize..range.end as usize);
            store.upload_part(key, &upload_id, i as i32 + 1, body)
        });
        let mut completed: Vec<CompletedPart> = futures::stream::iter(parts)
            .buffer_unordered(in_flight)
            .try_collect()
            .await
            .unwrap_or_else(|e| fail(format!("UploadPart {key}: {e}")));
        completed.sort_by_key(|p| p.number);
        let completing = Instant::now();
        store
            .complete_multipart(key, &upload_id, &completed, None)
            .await
            .unwrap_or_else(|e| fail(format!("CompleteMultipartUpload {key}: {e}")));
        complete_seconds = completing.elapsed().as_secs_f64();
    }
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "bytes": size, "requests": requests, "mib_per_s": size as f64 / MIB as f64 / seconds,
           "complete_seconds": complete_seconds})
}

/// PutObject of a `size`-byte object, `count` times one after the other: the median
/// latency.
async fn raw_put_latency(prefix: &str, count: usize, size: usize) -> Value {
    let store = store().await;
    let body = Bytes::from(vec![b'x'; size]);
    let mut samples = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}/one-{i:03}");
        let started = Instant::now();
        store
            .put(&key, body.clone(), &PutOptions::default())
            .await
            .unwrap_or_else(|e| fail(format!("PUT {key}: {e}")));
        samples.push(started.elapsed().as_secs_f64());
    }
    json!({"seconds": median(&mut samples), "samples": samples})
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    match samples.len() {
        0 => 0.0,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

/// Every regular file under `dir`, as (relative path, absolute path), sorted.
fn files_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut pending = VecDeque::from([dir.to_path_buf()]);
    while let Some(current) = pending.pop_front() {
        let entries = fs::read_dir(&current).unwrap_or_else(|e| fail(format!("read_dir {}: {e}", current.display())));
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = entry
                .file_type()
                .unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
            if kind.is_dir() {
                pending.push_back(path);
            } else if kind.is_file() {
                let relative = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
                found.push((relative, path));
            }
        }
    }
    found.sort();
    found
}

/// PutObject of every file under `dir` as `prefix/relative/path`, `in_flight` at once
/// (files are read before the clock starts).
async fn raw_put_dir(dir: &Path, prefix: &str, in_flight: usize) -> Value {
    let store = store().await;
    let files: Vec<(String, Bytes)> = files_under(dir)
        .into_iter()
        .map(|(relative, path)| {
            let body = fs::read(&path).unwrap_or_else(|e| fail(format!("read {}: {e}", path.display())));
            (format!("{prefix}/{relative}"), Bytes::from(body))
        })
        .collect();
    let bytes: u64 = files.iter().map(|(_, body)| body.len() as u64).sum();
    let options = PutOptions::default();
    let started = Instant::now();
    futures::stream::iter(&files)
        .map(|(key, body)| store.put(key, body.clone(), &options))
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .unwrap_or_else(|e| fail(format!("PUT: {e}")));
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "files": files.len(), "bytes": bytes})
}

/// Every key under `prefix` (flat listing, no delimiter).
async fn all_keys(store: &S3Store, prefix: &str) -> (Vec<String>, usize) {
    let (objects, pages) = all_objects(store, prefix).await;
    (objects.into_iter().map(|(key, _)| key).collect(), pages)
}

/// Every object under `prefix` with its size.
async fn all_objects(store: &S3Store, prefix: &str) -> (Vec<(String, u64)>, usize) {
    let mut keys = Vec::new();
    let mut pages = 0;
    let mut request = ListRequest {
        prefix: prefix.to_owned(),
        ..ListRequest::default()
    };
    loop {
        let page = store
            .list_page(&request)
            .await
            .unwrap_or_else(|e| fail(format!("LIST {prefix}: {e}")));
        pages += 1;
        keys.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
        match page.next {
            Some(next) => request.continuation = Some(next),
            None => break,
        }
    }
    (keys, pages)
}

/// Lists `prefix` and GETs every object whole in an order shuffled by `seed`, `in_flight`
/// at once: what an epoch of data-loader workers reading a dataset in random order has to
/// move at the least.
async fn raw_get_prefix(prefix: &str, in_flight: usize, seed: u64) -> Value {
    let store = store().await;
    let started = Instant::now();
    let (mut keys, pages) = all_objects(&store, prefix).await;
    fastrand::Rng::with_seed(seed).shuffle(&mut keys);
    let bytes: u64 = futures::stream::iter(&keys)
        .map(|(key, size)| get_and_count(&store, key, 0..*size))
        .buffer_unordered(in_flight)
        .try_fold(0, |total, n| async move { Ok(total + n) })
        .await
        .unwrap_or_else(|e| fail(format!("GET: {e}")));
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "files": keys.len(), "bytes": bytes, "list_pages": pages,
           "mib_per_s": bytes as f64 / MIB as f64 / seconds})
}

/// Lists `prefix` and deletes every key, `in_flight` DeleteObject at once (what `rm -r`
/// has to do at the least, without batch delete).
async fn raw_delete_prefix(prefix: &str, in_flight: usize) -> Value {
    let store = store().await;
    let started = Instant::now();
    let (keys, pages) = all_keys(&store, prefix).await;
    futures::stream::iter(&keys)
        .map(|key| store.delete(key))
        .buffer_unordered(in_flight)
        .try_for_each(|_| async { Ok(()) })
        .await
        .unwrap_or_else(|e| fail(format!("DELETE: {e}")));
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "keys": keys.len(), "list_pages": pages})
}

/// Every page of a listing of `prefix` (with or without the `/` delimiter).
async fn raw_list(prefix: &str, delimiter: bool) -> Value {
    let store = store().await;
    let mut request = ListRequest {
        prefix: prefix.to_owned(),
        delimiter: delimiter.then(|| "/".to_owned()),
        ..ListRequest::default()
    };
    let started = Instant::now();
    let (mut entries, mut pages) = (0, 0);
    loop {
        let page = store
            .list_page(&request)
            .await
            .unwrap_or_else(|e| fail(format!("LIST {prefix}: {e}")));
        pages += 1;
        entries += page.objects.len() + page.prefixes.len();
        match page.next {
            Some(next) => request.continuation = Some(next),
            None => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "entries": entries, "requests": pages})
}

/// Polls HEAD until `key` exists with `size` bytes: the end of an asynchronous upload.
async fn wait_object(key: &str, size: u64, timeout: Duration, every: Duration) -> Value {
    let store = store().await;
    let started = Instant::now();
    let mut heads = 0;
    loop {
        heads += 1;
        if let Ok(meta) = store.head(key).await
            && meta.size == size
        {
            // `found_unix`: when the answer came, for a harness that started this poller
            // before the write and keeps its own clock. It subtracts these requests from
            // the server's counts.
            let found_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            return json!({"seconds": started.elapsed().as_secs_f64(), "found_unix": found_unix,
                          "requests": {"HeadObject": heads}});
        }
        if started.elapsed() > timeout {
            fail(format!("{key} did not reach {size} bytes in {timeout:?}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls a flat listing until exactly `count` files are under `prefix`: `dir/` markers are
/// not counted (some tools write them and some do not), except for 0, which waits until
/// nothing at all is left, markers included (`rm -r` timed until the bucket is empty).
async fn wait_count(prefix: &str, count: usize, timeout: Duration) -> Value {
    let store = store().await;
    let started = Instant::now();
    let mut lists = 0;
    loop {
        let (mut keys, pages) = all_keys(&store, prefix).await;
        lists += pages;
        if count > 0 {
            keys.retain(|key| !key.ends_with('/'));
        }
        if keys.len() == count {
            // The harness subtracts its own requests from the server's counts.
            return json!({"seconds": started.elapsed().as_secs_f64(), "keys": keys.len(),
                          "requests": {"ListObjectsV2": lists}});
        }
        if started.elapsed() > timeout {
            fail(format!("{prefix}: {} keys, not {count}, after {timeout:?}", keys.len()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Timed syscalls on a mount

/// open() + the first read() of one byte.
fn file_ttfb(path: &Path) -> Value {
    let started = Instant::now();
    let mut file = File::open(path).unwrap_or_else(|e| fail(format!("open {}: {e}", path.display())));
    let mut byte = [0u8; 1];
    let n = file
        .read(&mut byte)
        .unwrap_or_else(|e| fail(format!("read {}: {e}", path.display())));
    let seconds = started.elapsed().as_secs_f64();
    if n != 1 {
        fail(format!("{}: empty", path.display()));
    }
    json!({"seconds": seconds})
}

/// `count` new 1-byte files, one after the other: the median time of close() alone, and
/// of create+write+close.
fn close_latency(dir: &Path, count: usize) -> Value {
    let mut closes = Vec::new();
    let mut totals = Vec::new();
    for i in 0..count {
        let path = dir.join(format!("one-{i:03}"));
        let started = Instant::now();
        let mut file = File::create(&path).unwrap_or_else(|e| fail(format!("create {}: {e}", path.display())));
        file.write_all(b"x")
            .unwrap_or_else(|e| fail(format!("write {}: {e}", path.display())));
        let closing = Instant::now();
        close_checked(file, &path);
        closes.push(closing.elapsed().as_secs_f64());
        totals.push(started.elapsed().as_secs_f64());
    }
    let total = median(&mut totals);
    json!({"seconds": median(&mut closes), "create_write_close_seconds": total, "samples": closes})
}

/// close(2) with its error checked: the upload error of a FUSE filesystem comes from it.
fn close_checked(file: File, path: &Path) {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: fd was just taken from a File that owned it; nothing else closes it.
    if unsafe { libc::close(fd) } != 0 {
        fail(format!("close {}: {}", path.display(), std::io::Error::last_os_error()));
    }
}

/// A new file of `size` bytes in 1 MiB write()s, close included (the writer's view).
fn write_file(path: &Path, size: u64) -> Value {
    let data = generated(size.min(64 * MIB));
    let started = Instant::now();
    let mut file = File::create(path).unwrap_or_else(|e| fail(format!("create {}: {e}", path.display())));
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        let chunk = (size - written).min(MIB) as usize;
        let offset = ((index % 64) * MIB) as usize % data.len();
        let end = (offset + chunk).min(data.len());
        file.write_all(&data[offset..end])
            .unwrap_or_else(|e| fail(format!("write {}: {e}", path.display())));
        written += (end - offset) as u64;
        index += 1;
    }
    close_checked(file, path);
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "bytes": written})
}

/// Sizes between `min` and `max`, the same for every run and tool.
fn file_sizes(count: usize, min: u64, max: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(2000);
    (0..count).map(|_| rng.u64(min..=max) as usize).collect()
}

/// `count` new files of `min`..`max` bytes, each created, written in one write() and
/// closed, one after the other (as cp does).
fn make_files(dir: &Path, count: usize, min: u64, max: u64) -> Value {
    let sizes = file_sizes(count, min, max);
    let mut content = vec![0u8; max as usize];
    fastrand::Rng::with_seed(3).fill(&mut content);
    let started = Instant::now();
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        let path = dir.join(format!("file-{i:05}"));
        let mut file = File::create(&path).unwrap_or_else(|e| fail(format!("create {}: {e}", path.display())));
        content[..8].copy_from_slice(&(i as u64).to_le_bytes());
        file.write_all(&content[..*size])
            .unwrap_or_else(|e| fail(format!("write {}: {e}", path.display())));
        close_checked(file, &path);
        bytes += size;
    }
    let seconds = started.elapsed().as_secs_f64();
    json!({"seconds": seconds, "files": count, "bytes": bytes})
}

/// The geesefs benchmark tree: `dirs` directories holding `files` files of `file_size`
/// bytes in all, dealt as evenly as possible (6,400 in 1,024: 256 dirs of 7, 768 of 6).
fn make_tree(dir: &Path, dirs: usize, files: usize, file_size: usize) -> Value {
    let started = Instant::now();
    let mut content = vec![0u8; file_size];
    fastrand::Rng::with_seed(4).fill(&mut content);
    let (base, extra) = (files / dirs, files % dirs);
    for d in 0..dirs {
        let sub = dir.join(format!("d{d:04}"));
        fs::create_dir_all(&sub).unwrap_or_else(|e| fail(format!("mkdir {}: {e}", sub.display())));
        let here = base + usize::from(d < extra);
        for f in 0..here {
            let path = sub.join(format!("f{f}"));
            fs::write(&path, &content).unwrap_or_else(|e| fail(format!("write {}: {e}", path.display())));
        }
    }
    json!({"seconds": started.elapsed().as_secs_f64(), "dirs": dirs, "files": files})
}

/// A two-level tree for `find`: `top` directories of `sub` directories of `files` files
/// of 100 bytes each.
fn make_find_tree(dir: &Path, top: usize, sub: usize, files: usize) -> Value {
    let started = Instant::now();
    let content = [b'f'; 100];
    for t in 0..top {
        for s in 0..sub {
            let leaf = dir.join(format!("t{t:02}/s{s:02}"));
            fs::create_dir_all(&leaf).unwrap_or_else(|e| fail(format!("mkdir {}: {e}", leaf.display())));
            for f in 0..files {
                let path = leaf.join(format!("f{f:03}"));
                fs::write(&path, content).unwrap_or_else(|e| fail(format!("write {}: {e}", path.display())));
            }
        }
    }
    let entries = top + top * sub + top * sub * files;
    json!({"seconds": started.elapsed().as_secs_f64(), "entries": entries})
}
