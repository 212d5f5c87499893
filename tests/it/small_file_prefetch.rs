//! Small files fetched ahead of their opens (src/fs/small_file_prefetch.rs), through a real
//! FUSE mount of the in-process S3 server.

use crate::common;

use common::{Mount, eventually, pattern, put, server};
use s3vol::server::RunningServer;
use std::time::Duration;

fn name(i: usize) -> String {
    format!("data/d0/f{i:02}")
}

/// Once three small files of a directory were opened, the next ones are fetched in the
/// background, 32 ahead: those are read from the cache, in any order, and each open of
/// one slides the window on, so a walk in name order finds every file ahead of it. Each
/// file is fetched once; a file larger than the small-file bound is left alone; a file
/// replaced since the listing is read in its new version, not the one the listing named.
#[test]
fn a_walk_of_a_directorys_small_files_finds_them_fetched_ahead() {
    let _turn = common::shared();
    let s = server();
    let mut files: Vec<Vec<u8>> = (0..40).map(|i| pattern(20_000 + i * 1000, i as u32)).collect();
    for (i, data) in files.iter().enumerate() {
        put(&s, &name(i), data.clone());
    }
    put(&s, "data/d0/large.bin", pattern(5 << 20, 99));
    s.quirks().set_latency(Duration::from_millis(20));
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    assert_eq!(std::fs::read_dir(m.join("data/d0")).unwrap().count(), 41);
    // Replaced after the listing, same size: its listed ETag is stale.
    files[10] = pattern(files[10].len(), 1234);
    put(&s, &name(10), files[10].clone());
    s.stats().reset();
    let read = |i: usize| assert!(std::fs::read(m.join(&name(i))).unwrap() == files[i], "file {i}");
    (0..3).for_each(read);
    // f03..f34; f10's fetch fails (412) and is not counted.
    let fetched = || m.status_count("prefetched_files");
    eventually(Duration::from_secs(30), || fetched() >= 31);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fetched(), 31, "{}", m.log());
    // Every one of them is read from the cache (each open slides the window on).
    let misses = m.status_count("cache_misses");
    let shuffled = [17, 4, 33, 12, 8, 29, 15, 3, 18, 6, 24, 11, 14, 5, 34, 16, 9, 13, 7, 21];
    shuffled.into_iter().for_each(read);
    assert_eq!(m.status_count("cache_misses"), misses, "{}", m.log());
    (10..40).filter(|i| !shuffled.contains(i)).for_each(read);
    // Every file once, f10 twice (the prefetch's 412, then its new version), large.bin never.
    assert_eq!(
        s.stats().count("GetObject"),
        41,
        "{:?}\n{}",
        s.stats().snapshot(),
        m.log()
    );
    assert_eq!(m.status_count("prefetched_files_used"), 36);
}

/// One or two files of a directory are not a walk: nothing is fetched ahead. And
/// `--small-file-prefetch false` turns it off.
#[test]
fn two_opens_fetch_nothing_ahead_and_the_option_turns_it_off() {
    let _turn = common::shared();
    let s = server();
    for i in 0..20 {
        put(&s, &name(i), pattern(10_000, i as u32));
    }
    opens_fetch_nothing_more(&s, &[], 2);
    opens_fetch_nothing_more(&s, &["--small-file-prefetch", "false"], 5);
}

/// On a mount with `args`, `opens` files of the directory are read: they are the only
/// GETs, and nothing is fetched ahead.
fn opens_fetch_nothing_more(s: &RunningServer, args: &[&str], opens: usize) {
    s.stats().reset();
    let m = Mount::new(s, args);
    assert_eq!(std::fs::read_dir(m.join("data/d0")).unwrap().count(), 20);
    for i in 0..opens {
        std::fs::read(m.join(&name(i))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(m.status_count("prefetched_files"), 0);
    assert_eq!(s.stats().count("GetObject"), opens as u64);
}

/// In a directory of many small files read in a random order, the window keeps growing
/// past a few hundred files with each open that found its file fetched: a reader of
/// 10,000 files of one directory found its next file among 256 ahead seldom (the first
/// epoch over a 40 ms link took 72 s against 25 s with room for 8,192).
#[test]
fn the_window_of_a_large_directory_grows_past_a_few_hundred_files() {
    let _turn = common::shared();
    let s = server();
    let count = 700;
    let file = |i: usize| format!("wide/f{i:03}");
    for i in 0..count {
        put(&s, &file(i), pattern(2_000, i as u32));
    }
    s.quirks().set_latency(Duration::from_millis(20));
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    assert_eq!(std::fs::read_dir(m.join("wide")).unwrap().count(), count);
    let fetched = || m.status_count("prefetched_files");
    // Opens in name order: after the third, each finds its file ahead (fetched or on its
    // way) and widens the window by 16: 32 + 37 x 16 = 624 files.
    for i in 0..40 {
        std::fs::read(m.join(&file(i))).unwrap();
    }
    let wide = eventually(Duration::from_secs(30), || fetched() >= 600);
    assert!(wide, "{} fetched ahead: {}", fetched(), m.log());
}

/// However small the files, the budget of what is fetched ahead bounds how many are: each
/// counts for 64 KiB at least (an eighth of the block memory here, without a disk cache:
/// 4 MiB, 64 files ahead at once; 2 KB each, the window's 600 would fit).
#[test]
fn tiny_files_fetched_ahead_are_counted_within_the_budget() {
    let _turn = common::shared();
    let s = server();
    let count = 700;
    let file = |i: usize| format!("tiny/f{i:03}");
    for i in 0..count {
        put(&s, &file(i), pattern(2_000, i as u32));
    }
    s.quirks().set_latency(Duration::from_millis(20));
    let m = Mount::new(
        &s,
        &["--metadata-ttl", "60", "--cache-size", "0", "--memory-limit", "64MiB"],
    );
    assert_eq!(std::fs::read_dir(m.join("tiny")).unwrap().count(), count);
    for i in 0..40 {
        std::fs::read(m.join(&file(i))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let fetched = m.status_count("prefetched_files");
    // The 40 opened (each fetched ahead first) and 64 ahead at most; some slack.
    assert!(fetched <= 40 + 64 + 16, "{fetched} fetched ahead: {}", m.log());
}

/// Next to the server (its answers come at once) a directory reads two files ahead at most,
/// however long the files take to arrive: the time a fetch takes grows with its body and
/// with everything else sharing the CPU, and counting it as the distance to the server
/// kept 1 GiB of 1 MB files ahead in a cold epoch next to the server, 650 MB of fresh
/// memory (BENCHMARKS.md item 145).
#[test]
fn next_to_the_server_slow_bodies_do_not_widen_the_read_ahead() {
    let _turn = common::shared();
    let s = server();
    for i in 0..40 {
        put(&s, &name(i), pattern(20_000, i as u32));
    }
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    assert_eq!(std::fs::read_dir(m.join("data/d0")).unwrap().count(), 40);
    // Every body starts 60 ms after its headers.
    s.quirks().stall_body(1_000, 0, Duration::from_millis(60));
    for i in 0..3 {
        std::fs::read(m.join(&name(i))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1_000));
    let fetched = m.status_count("prefetched_files");
    assert!((1..=2).contains(&fetched), "{fetched} fetched ahead: {}", m.log());
}
