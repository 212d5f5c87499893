//! The persisted metadata of a dataset's files read by the GETs of their data: a walk sends
//! no HEAD, a file read costs one GET, and what the metadata says (mode, mtime, a type
//! an object cannot have) shows as a HEAD would have shown it (src/fs/metadata_by_get.rs).

use crate::common::{self, Mount, pattern, server};
use s3vol::server::RunningServer;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const FILES: usize = 100;
/// Over the longest symlink target: the listing alone tells such a file's type.
const SIZE: usize = 5000;

fn name(i: usize) -> String {
    format!("ds/f{i:03}")
}

/// A dataset directory: `FILES` files of `SIZE` bytes; f007 executable with a persisted
/// mtime, f011 owned by uid 4242, f013 declaring itself a symlink (it is 5,000 bytes).
fn dataset(s: &RunningServer) {
    let backend = s.backend();
    let (exe, link) = (0o100755u32.to_string(), 0o120777u32.to_string());
    for i in 0..FILES {
        let meta: Vec<(&str, &str)> = match i {
            7 => vec![("mode", &exe), ("mtime", "1600000000")],
            11 => vec![("uid", "4242")],
            13 => vec![("mode", &link)],
            _ => vec![],
        };
        backend
            .put_object(common::BUCKET, &name(i), pattern(SIZE, i as u32), &meta)
            .unwrap();
    }
}

fn requests(s: &RunningServer) -> (u64, u64) {
    (s.stats().count("HeadObject"), s.stats().count("GetObject"))
}

/// A DataLoader's epoch: a walk, then every file read in an order unlike the listing's.
#[test]
fn a_walk_sends_no_head_and_each_file_read_costs_one_get() {
    let _turn = common::shared();
    let s = server();
    dataset(&s);
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    let start = requests(&s);
    let entries: Vec<_> = std::fs::read_dir(m.join("ds")).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(entries.len(), FILES);
    assert!(entries.iter().all(|e| e.file_type().unwrap().is_file()));
    let (heads, _) = requests(&s);
    // The lookup of `ds` HEADs `ds` and its marker, none of its files.
    assert!(
        heads - start.0 <= 2,
        "{} HEADs for a walk of {FILES} files",
        heads - start.0
    );
    // A stride through the names: never two neighbours of the listing one after the other,
    // nor the first entry right after the listing (`ls -l`'s start, which sweeps at once).
    for i in (0..FILES).map(|k| (k * 37 + 1) % FILES) {
        let path = m.join(&name(i));
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.is_file(), "{}", name(i));
        assert_eq!(std::fs::read(&path).unwrap(), pattern(SIZE, i as u32), "{}", name(i));
        match i {
            7 => {
                assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
                assert_eq!(meta.mtime(), 1_600_000_000);
            }
            11 => assert_eq!(meta.uid(), 4242),
            // Not a symlink, and not given the mode of one.
            13 => assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{}", m.log()),
            _ => assert_eq!(meta.permissions().mode() & 0o7777, 0o644),
        }
    }
    let (heads, gets) = requests(&s);
    assert!(heads - start.0 <= 2, "{} HEADs: files were HEADed", heads - start.0);
    assert_eq!(gets - start.1, FILES as u64, "one GET per file");
}

/// `ls -l` stats every entry in listing order: after the first few, the rest of the
/// directory is HEADed ahead of it, not fetched (and waited for) one by one.
#[test]
fn ls_l_of_a_dataset_heads_the_entries_ahead_of_its_stats() {
    let _turn = common::shared();
    let s = server();
    dataset(&s);
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    let start = requests(&s);
    let out = std::process::Command::new("ls")
        .args(["-l", "--time-style=+%s"])
        .arg(m.join("ds"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let line = |file: &str| {
        listing
            .lines()
            .find(|l| l.split_whitespace().nth(6) == Some(file))
            .unwrap_or_else(|| panic!("{file} not in {listing}"))
            .to_string()
    };
    assert_eq!(listing.lines().count(), FILES + 1);
    assert!(line("f007").starts_with("-rwxr-xr-x"), "{}", line("f007"));
    assert!(line("f007").contains(" 1600000000 "), "{}", line("f007"));
    assert!(line("f011").contains(" 4242 "), "{}", line("f011"));
    assert!(line("f013").starts_with("-rw-r--r--"), "{}", line("f013"));
    let (heads, gets) = requests(&s);
    let (heads, gets) = (heads - start.0, gets - start.1);
    // None when the first stat came right after the listing (the sweep starts there), else
    // the first two entries' (a run from the first entry, then the sweep).
    assert!(gets <= 2, "{gets} GETs: the stats fetched their files one by one");
    // Each entry's once, and the lookup's of `ds` (as a file, as a directory's marker).
    assert!(heads + gets <= FILES as u64 + 2, "{heads} HEADs and {gets} GETs");
}

/// `ls -l` of a directory of many pages stats as it reads (a getdents, then a stat of each
/// name it gave): the names of pages listed after its sweep are HEADed ahead of the stats
/// too, many at once, not one per stat (over a 40 ms link, 10,000 files, 400 s before:
/// BENCHMARKS.md item 112).
#[test]
fn ls_l_of_a_directory_of_many_pages_heads_every_page_ahead_of_its_stats() {
    let _turn = common::alone();
    let s = server();
    let backend = s.backend();
    let exe = 0o100755u32.to_string();
    const MANY: usize = 2_500;
    for i in 0..MANY {
        let meta: Vec<(&str, &str)> = if i == 2_222 { vec![("mode", &exe)] } else { vec![] };
        backend
            .put_object(common::BUCKET, &format!("big/f{i:05}"), pattern(SIZE, i as u32), &meta)
            .unwrap();
    }
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    s.quirks().set_latency(std::time::Duration::from_millis(5));
    let mut stated = 0;
    for entry in std::fs::read_dir(m.join("big")).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let want = if entry.file_name() == "f02222" { 0o755 } else { 0o644 };
        assert_eq!(meta.permissions().mode() & 0o7777, want, "{:?}", entry.file_name());
        stated += 1;
        if stated == 1_200 {
            // Past the first page (and its sweep): what follows is the later pages'.
            s.stats().reset();
        }
    }
    s.quirks().set_latency(std::time::Duration::ZERO);
    assert_eq!(stated, MANY);
    // Since the reset: each later entry's HEAD once at most, no GET; sent before their
    // stats came, or many at once (one at a time, one per stat, without the sweeps on).
    let (heads, gets) = requests(&s);
    assert!(
        gets == 0 && heads <= (MANY - 1_200) as u64,
        "{heads} HEADs, {gets} GETs"
    );
    let at_once = s.stats().peak_in_flight("HeadObject");
    assert!(
        heads < 200 || at_once >= 16,
        "{heads} HEADs for the last {} stats, {at_once} at a time",
        MANY - 1_200
    );
}

/// `ls -lR` stats the entries of one directory after another: once the first is swept,
/// the directories beside it are HEADed with their listings, not fetched name by name.
#[test]
fn a_recursive_ls_heads_the_directories_after_the_first_it_swept() {
    let _turn = common::shared();
    let s = server();
    let backend = s.backend();
    let exe = 0o100755u32.to_string();
    for d in 0..4 {
        for i in 0..70 {
            let meta: Vec<(&str, &str)> = if i == 42 { vec![("mode", &exe)] } else { vec![] };
            let key = format!("top/d{d}/f{i:02}");
            backend
                .put_object(common::BUCKET, &key, pattern(SIZE, i), &meta)
                .unwrap();
        }
    }
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    let start = requests(&s);
    let out = std::process::Command::new("ls")
        .arg("-lR")
        .arg(m.join("top"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let executables = listing.lines().filter(|l| l.starts_with("-rwxr-xr-x")).count();
    assert_eq!(executables, 4, "{listing}");
    assert_eq!(listing.lines().filter(|l| l.starts_with("-rw-r--r--")).count(), 4 * 69);
    let (heads, gets) = requests(&s);
    let (heads, gets) = (heads - start.0, gets - start.1);
    assert!(
        gets <= 4,
        "{gets} GETs: the stats of the later directories fetched their files"
    );
    assert!(heads <= 4 * 70 + 10, "{heads} HEADs");
}

/// A DataLoader that walks its dataset and starts reading at once, in an order that meets
/// the first entry of a directory and then its second: neither is an `ls -l` (whose sweep
/// would have HEADed that directory and, in a walk, the ones beside it).
#[test]
fn reads_after_a_walk_send_no_head_even_from_the_first_two_entries() {
    let _turn = common::shared();
    let s = server();
    let backend = s.backend();
    for d in 0..4 {
        for i in 0..70 {
            let key = format!("walk/d{d}/f{i:02}");
            backend.put_object(common::BUCKET, &key, pattern(SIZE, i), &[]).unwrap();
        }
    }
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    let start = requests(&s);
    let dirs: Vec<_> = std::fs::read_dir(m.join("walk"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let mut files: Vec<Vec<_>> = dirs
        .iter()
        .map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect())
        .collect();
    files.iter_mut().for_each(|names| names.sort());
    let read = |d: usize, i: usize| {
        let path = &files[d][i];
        assert_eq!(std::fs::metadata(path).unwrap().len(), SIZE as u64);
        assert_eq!(
            std::fs::read(path).unwrap(),
            pattern(SIZE, i as u32),
            "walk/d{d}/f{i:02}"
        );
    };
    let stride = |n: usize| (0..n).map(move |k| k * 17 % n);
    // Right after the walk, the first entry of the first directory, then a stride.
    for i in stride(70) {
        read(0, i);
    }
    // Later, the first two entries of the others one after the other, then the rest.
    std::thread::sleep(std::time::Duration::from_millis(200));
    for d in 1..files.len() {
        for i in [0, 1].into_iter().chain(stride(70).filter(|i| *i > 1)) {
            read(d, i);
        }
    }
    let (heads, gets) = requests(&s);
    // The lookups of `walk` and its directories: each as a file and as a marker.
    assert!(
        heads - start.0 <= 10,
        "{} HEADs: the reads set off a sweep",
        heads - start.0
    );
    assert_eq!(gets - start.1, 4 * 70, "one GET per file");
}
