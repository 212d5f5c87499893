//! Reading through a real FUSE mount of the in-process S3 server.

use crate::common;

use common::{Mount, eventually, pattern, put, server, walk};
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

#[test]
fn lists_a_tree_of_1500_keys_in_nested_prefixes() {
    let _turn = common::shared();
    let s = server();
    let mut expected = BTreeSet::new();
    for i in 0..1500 {
        let key = format!("d{}/s{}/f{i}.txt", i % 7, i % 13);
        put(&s, &key, format!("{i}"));
        expected.insert(key);
    }
    let m = Mount::new(&s, &[]);
    let seen = walk(&m.path);
    let files: BTreeSet<String> = seen.iter().filter(|p| !p.ends_with('/')).cloned().collect();
    assert_eq!(files, expected);
    assert_eq!(seen.iter().filter(|p| p.ends_with('/')).count(), 7 + 7 * 13);
    assert_eq!(std::fs::read_to_string(m.join("d3/s10/f101.txt")).unwrap(), "101");
}

#[test]
fn reads_a_64_mib_object_byte_for_byte() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(64 << 20, 7);
    put(&s, "big.bin", data.clone());
    let m = Mount::new(&s, &["--memory-limit", "64MiB"]);
    let path = m.join("big.bin");

    // Sequential.
    assert!(std::fs::read(&path).unwrap() == data, "sequential read differs");

    // Random offsets.
    let file = std::fs::File::open(&path).unwrap();
    let mut rng = 12345u64;
    for _ in 0..200 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let offset = (rng >> 16) % (data.len() as u64);
        let len = ((rng >> 40) % 300_000) as usize + 1;
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, offset).unwrap();
        let end = (offset as usize + len).min(data.len());
        assert_eq!(n, end - offset as usize);
        assert!(
            buf[..n] == data[offset as usize..end],
            "random read at {offset} differs"
        );
    }

    // Concurrent readers, each over its own region and the whole file.
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let (path, data) = (&path, &data);
            scope.spawn(move || {
                let mut f = std::fs::File::open(path).unwrap();
                let start = t * (16 << 20);
                f.seek(SeekFrom::Start(start)).unwrap();
                let mut buf = vec![0u8; 16 << 20];
                f.read_exact(&mut buf).unwrap();
                assert!(
                    buf == data[start as usize..start as usize + (16 << 20)],
                    "reader {t} differs"
                );
            });
        }
    });
}

#[test]
fn names_with_special_characters_work_both_ways() {
    let _turn = common::shared();
    let s = server();
    let names = [
        "with space.txt",
        "hash#tag",
        "100% done",
        "a+b=c",
        "résumé été.txt",
        "日本語",
        "emoji 🎉",
    ];
    for n in names {
        put(&s, &format!("dir/{n}"), n.to_string());
    }
    let m = Mount::new(&s, &[]);
    for n in names {
        assert_eq!(std::fs::read_to_string(m.join(&format!("dir/{n}"))).unwrap(), n);
    }
    let listed: BTreeSet<String> = std::fs::read_dir(m.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, names.iter().map(|n| n.to_string()).collect());
    // And written through the mount, they become the same keys.
    for n in names {
        std::fs::write(m.join(&format!("new {n}")), n).unwrap();
        m.sync();
        assert_eq!(common::object(&s, &format!("new {n}")).as_deref(), Some(n.as_bytes()));
    }
}

#[test]
fn marker_directories_and_a_file_beside_its_directory() {
    let _turn = common::shared();
    let s = server();
    put(&s, "empty/", "");
    put(&s, "nested/marker/", "");
    put(&s, "a", "file a");
    put(&s, "a/b", "file b");
    put(&s, "bad//name", "unreachable");
    put(&s, "dot/./x", "unreachable");
    let m = Mount::new(&s, &[]);
    assert!(m.join("empty").is_dir());
    assert_eq!(std::fs::read_dir(m.join("empty")).unwrap().count(), 0);
    assert!(m.join("nested/marker").is_dir());
    // The directory wins over the file of the same name.
    assert!(m.join("a").is_dir());
    assert_eq!(std::fs::read_to_string(m.join("a/b")).unwrap(), "file b");
    let root: BTreeSet<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        root,
        ["a", "bad", "dot", "empty", "nested"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // Unusable names are skipped, never break the listing.
    assert_eq!(std::fs::read_dir(m.join("bad")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(m.join("dot")).unwrap().count(), 0);
}

#[test]
fn an_object_replaced_remotely_while_open_is_never_mixed() {
    let _turn = common::shared();
    let s = server();
    let old = pattern(8 << 20, 1);
    put(&s, "f.bin", old.clone());
    let m = Mount::new(&s, &[]);
    let file = std::fs::File::open(m.join("f.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    assert!(head == old[..4096]);
    put(&s, "f.bin", pattern(8 << 20, 2));
    let mut tail = vec![0u8; 4096];
    let err = file
        .read_exact_at(&mut tail, 6 << 20)
        .expect_err("a read of the replaced object must fail");
    assert!(
        matches!(err.raw_os_error(), Some(libc::ESTALE) | Some(libc::EIO)),
        "{err}"
    );
    drop(file);
    // A new open sees the new version once the metadata TTL (1 s) has passed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(std::fs::read(m.join("f.bin")).unwrap() == pattern(8 << 20, 2));
    assert!(m.unmount().contains("changed remotely"));
}

#[test]
fn missing_files_and_read_only_mounts() {
    let _turn = common::shared();
    let s = server();
    put(&s, "x", "1");
    let m = Mount::new(&s, &["--read-only"]);
    assert_eq!(
        std::fs::read(m.join("nope")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    let err = std::fs::write(m.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::OpenOptions::new().write(true).open(m.join("x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
}

#[test]
fn extended_attributes_are_not_supported() {
    let _turn = common::shared();
    let s = server();
    put(&s, "x", "1");
    let m = Mount::new(&s, &[]);
    let path = std::ffi::CString::new(m.join("x").into_os_string().into_encoded_bytes()).unwrap();
    let name = c"user.test";
    // Twice: the first answer (ENOSYS to the kernel) is remembered by the kernel, and the
    // caller sees EOPNOTSUPP both times.
    for _ in 0..2 {
        // SAFETY: both strings are NUL-terminated; a null buffer of size 0 asks for the size.
        let got = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(got, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EOPNOTSUPP));
        // SAFETY: as above.
        let listed = unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(listed, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EOPNOTSUPP));
    }
    assert_eq!(std::fs::read_to_string(m.join("x")).unwrap(), "1");
}

/// A terminal check (TCGETS, as Python's open() makes on every file) is answered ENOTTY,
/// quietly: guards against a warning in the log per file a data loader opens.
#[test]
fn a_terminal_check_is_answered_not_a_terminal_without_a_log_line() {
    let _turn = common::shared();
    let s = server();
    put(&s, "x", "1");
    let m = Mount::new(&s, &[]);
    let file = std::fs::File::open(m.join("x")).unwrap();
    let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
    for _ in 0..3 {
        // SAFETY: TCGETS fills a termios, which `termios` has room for.
        let got = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::TCGETS,
                termios.as_mut_ptr(),
            )
        };
        assert_eq!(got, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOTTY));
    }
    drop(file);
    let log = m.unmount();
    assert!(!log.contains("ioctl"), "the log mentions the ioctl:\n{log}");
}

/// A listing carries no user metadata: `ls -l` of a fresh mount HEADs each entry once (all
/// of a page at once) so that persisted modes and symlinks show from the first listing on;
/// listing again after the TTL costs LIST pages only.
#[test]
fn ls_l_shows_persisted_metadata_from_the_first_listing_with_one_head_per_entry() {
    let _turn = common::alone();
    let s = server();
    for i in 0..2500 {
        put(&s, &format!("many/f{i:05}"), "x");
    }
    let backend = s.backend();
    let mode = |m: u32| m.to_string();
    let (exe, link) = (mode(0o100755), mode(0o120777));
    backend
        .put_object(
            common::BUCKET,
            "many/run.sh",
            "#!/bin/sh\n",
            &[("mode", &exe), ("mtime", "1600000000")],
        )
        .unwrap();
    backend
        .put_object(common::BUCKET, "many/link", "f00001", &[("mode", &link)])
        .unwrap();
    let m = Mount::new(&s, &["--metadata-ttl", "1"]);
    let ls = || {
        let out = std::process::Command::new("ls")
            .args(["-l", "--time-style=+%s"])
            .arg(m.join("many"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let count = || (s.stats().count("ListObjectsV2"), s.stats().count("HeadObject"));
    let before = count();
    let listing = ls();
    assert_eq!(listing.lines().count(), 2503);
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.split_whitespace().nth(6) == Some(name))
            .unwrap_or_else(|| panic!("{name} not in the listing"))
            .to_string()
    };
    assert!(line("run.sh").starts_with("-rwxr-xr-x"), "{}", line("run.sh"));
    assert!(line("run.sh").contains(" 1600000000 "), "{}", line("run.sh"));
    assert!(line("link").starts_with("lrwxrwxrwx"), "{}", line("link"));
    assert!(line("link").ends_with("link -> f00001"), "{}", line("link"));
    let (lists, heads) = (count().0 - before.0, count().1 - before.1);
    // The lookup of `many` (LIST of the root and of `many/`), the two segments its first
    // 1,000 names split the listing into, and after the second's first page four guessed
    // segments and the one to the end (guessed_splits.rs).
    assert!(lists <= 9, "{lists} LIST requests");
    // One HEAD per entry, and the lookup's HEADs of `many` and its marker.
    assert!((2502..=2504).contains(&heads), "{heads} HEAD requests");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let before = count();
    let again = ls();
    assert_eq!(again.lines().count(), 2503);
    let (lists, heads) = (count().0 - before.0, count().1 - before.1);
    // The revalidation of `many`, then 3 pages.
    assert!(lists <= 5, "{lists} LIST requests");
    assert!(heads <= 2, "{heads} HEAD requests: the entries' metadata is known");
}

#[test]
fn the_inode_table_stays_within_its_budget_when_the_kernel_forgets() {
    let _turn = common::alone();
    let s = server();
    for i in 0..12_000 {
        put(&s, &format!("big/f{i:05}"), "x");
    }
    // 16 MiB of memory limit: 4,096 inodes.
    let m = Mount::new(&s, &["--memory-limit", "16MiB"]);
    let listed = std::fs::read_dir(m.join("big")).unwrap().count();
    assert_eq!(listed, 12_000);
    for i in (0..12_000).step_by(7) {
        std::fs::metadata(m.join(&format!("big/f{i:05}"))).unwrap();
    }
    // The kernel forgets its dentries and inodes: FORGET for each.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    std::fs::read_dir(m.join("big")).unwrap().count();
    let inodes = m.status()["inodes"].as_u64().unwrap();
    eprintln!("{inodes} inodes cached");
    assert!(inodes <= 4096 + 1100, "{inodes} inodes cached");
    // Everything still resolves, with data intact.
    assert_eq!(std::fs::read_to_string(m.join("big/f00007")).unwrap(), "x");
    assert_eq!(std::fs::read_dir(m.join("big")).unwrap().count(), 12_000);
}

/// Reading a directory lists its subdirectories in the background: a tree walk then finds
/// every listing ready, and nothing is listed twice. The directories beside it are not
/// listed (nor their entries HEADed) when its parent was not read: `os.walk` of `p` is no
/// walk of the root.
#[test]
fn reading_a_directory_prefetches_its_subdirectories() {
    let _turn = common::shared();
    let s = server();
    for d in 0..20 {
        for f in 0..3 {
            put(&s, &format!("p/d{d}/f{f}"), "x");
        }
    }
    for d in 0..4 {
        for f in 0..50 {
            put(&s, &format!("q{d}/f{f}"), "x");
        }
    }
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    let before = s.stats().count("ListObjectsV2");
    assert_eq!(std::fs::read_dir(m.join("p")).unwrap().count(), 20);
    // The lookup of p (a listing of the root), p's listing, then one per subdirectory,
    // none of which was read yet.
    let wanted = before + 22;
    eventually(Duration::from_secs(30), || s.stats().count("ListObjectsV2") >= wanted);
    // Time for listings of p's siblings, were any sent.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.stats().count("ListObjectsV2"), wanted, "{}", m.log());
    let heads = s.stats().count("HeadObject");
    assert!(heads < 100, "{heads} HEADs: the entries of q0..q3 were HEADed");
    for d in 0..20 {
        assert_eq!(std::fs::read_dir(m.join(&format!("p/d{d}"))).unwrap().count(), 3);
    }
    assert_eq!(
        s.stats().count("ListObjectsV2"),
        wanted,
        "the walk listed nothing again"
    );
}

/// `ls` of a directory lists its subdirectories ahead but HEADs none of their entries (it
/// sent a HEAD for each small file of each); a look into one of them HEADs its own; a walk
/// going through them (a second one read) HEADs the entries of those after it ahead of
/// its readdirs. What they show (a symlink among small files) is right either way.
#[test]
fn a_listing_prefetched_by_an_ls_heads_its_entries_only_ahead_of_a_walk() {
    let _turn = common::shared();
    let s = server();
    for d in 0..6 {
        for f in 0..200 {
            put(&s, &format!("r/d{d}/f{f:03}"), "x");
        }
    }
    let link = 0o120777u32.to_string();
    s.backend()
        .put_object(common::BUCKET, "r/d4/link", "f001", &[("mode", &link)])
        .unwrap();
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    let count = |op: &str| s.stats().count(op);
    let (lists, heads) = (count("ListObjectsV2"), count("HeadObject"));
    assert_eq!(std::fs::read_dir(m.join("r")).unwrap().count(), 6);
    // The lookup of r (a listing of the root), r's listing, one per subdirectory.
    eventually(Duration::from_secs(30), || count("ListObjectsV2") >= lists + 8);
    std::thread::sleep(Duration::from_millis(500));
    let after_ls = count("HeadObject") - heads;
    assert!(after_ls < 10, "{after_ls} HEADs after an ls of r: {}", m.log());
    // A look into one: its own entries, none beside it.
    assert_eq!(std::fs::read_dir(m.join("r/d0")).unwrap().count(), 200);
    std::thread::sleep(Duration::from_millis(500));
    let after_d0 = count("HeadObject") - heads;
    assert!((200..210).contains(&after_d0), "{after_d0} HEADs after d0: {}", m.log());
    // A walk: the entries of d2..d5 are HEADed ahead of their readdirs.
    assert_eq!(std::fs::read_dir(m.join("r/d1")).unwrap().count(), 200);
    let all = 6 * 200 + 1;
    assert!(
        eventually(Duration::from_secs(30), || count("HeadObject") - heads >= all),
        "{} HEADs: {}",
        count("HeadObject") - heads,
        m.log()
    );
    // HEADs of the walk still under way when the count got there land after it (a CI
    // run counted one more right after): wait until none has come for 300 ms.
    let mut last = count("HeadObject");
    eventually(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = count("HeadObject");
        std::mem::replace(&mut last, now) == now
    });
    let before_d4 = count("HeadObject");
    let link_entry = std::fs::read_dir(m.join("r/d4"))
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "link")
        .expect("the link is listed");
    assert!(link_entry.file_type().unwrap().is_symlink());
    assert_eq!(std::fs::read_link(m.join("r/d4/link")).unwrap(), Path::new("f001"));
    assert_eq!(count("HeadObject"), before_d4, "d4's entries were HEADed ahead");
    assert!(count("HeadObject") - heads < all + 10, "each entry HEADed once");
}

/// A walk going through a directory goes through its subdirectories too: once `find`
/// has read two of `n`'s subdirectories, the listings that the second one's readdir
/// prefetches HEAD their entries ahead of the walk, before it reads them.
#[test]
fn a_walk_going_through_a_directory_heads_ahead_in_its_subdirectories() {
    let _turn = common::shared();
    let s = server();
    for d in ["a", "b"] {
        for x in 0..4 {
            for f in 0..50 {
                put(&s, &format!("n/{d}/x{x}/f{f:02}"), "x");
            }
        }
    }
    let m = Mount::new(&s, &["--metadata-ttl", "60"]);
    let heads = || s.stats().count("HeadObject");
    let before = heads();
    assert_eq!(std::fs::read_dir(m.join("n")).unwrap().count(), 2);
    assert_eq!(std::fs::read_dir(m.join("n/a")).unwrap().count(), 4);
    std::thread::sleep(Duration::from_millis(500));
    // The markers of a's subdirectories at most: a walk of n is not known yet.
    let looked = heads() - before;
    assert!(looked < 20, "{looked} HEADs after a look into n/a: {}", m.log());
    assert_eq!(std::fs::read_dir(m.join("n/b")).unwrap().count(), 4);
    // b's four subdirectories' 200 files, none of them read.
    assert!(
        eventually(Duration::from_secs(30), || heads() - before >= looked + 200),
        "{} HEADs: {}",
        heads() - before,
        m.log()
    );
    let ahead = heads();
    for x in 0..4 {
        assert_eq!(std::fs::read_dir(m.join(&format!("n/b/x{x}"))).unwrap().count(), 50);
    }
    assert_eq!(heads(), ahead, "b's subdirectories were HEADed ahead of their readdirs");
}

/// A directory of several LIST pages whose names are looked up again after the metadata
/// TTL (a DataLoader's next epoch, opening its files by path without listing) is listed
/// again whole once a few names were revalidated one by one, not once per name; what the
/// new listing shows replaced, gone or new is seen.
#[test]
fn names_of_a_large_directory_revalidated_together_cost_a_listing_not_a_list_each() {
    let _turn = common::shared();
    let s = server();
    let names: Vec<String> = (0..2500).map(|i| format!("f{i:04}")).collect();
    for n in &names {
        put(&s, &format!("big/{n}"), "x");
    }
    let m = Mount::new(&s, &["--metadata-ttl", "1"]);
    assert_eq!(std::fs::read_dir(m.join("big")).unwrap().count(), 2500);
    std::thread::sleep(Duration::from_millis(1500));
    // Another client meanwhile: one file replaced, one deleted, one added.
    put(&s, "big/f0100", "replaced");
    assert!(s.backend().delete_object(common::BUCKET, "big/f0200"));
    put(&s, "big/f9999", "new");
    s.stats().reset();
    // Every name again, in an order unlike the listing's.
    let mut order: Vec<&String> = names.iter().collect();
    order.sort_by_key(|n| n.chars().rev().collect::<String>());
    for n in order {
        let found = std::fs::metadata(m.join(&format!("big/{n}")));
        match n.as_str() {
            "f0200" => assert!(found.is_err(), "f0200 was deleted"),
            "f0100" => assert_eq!(found.unwrap().len(), 8, "f0100 was replaced"),
            _ => assert_eq!(found.unwrap().len(), 1, "{n}"),
        }
    }
    assert_eq!(std::fs::read_to_string(m.join("big/f9999")).unwrap(), "new");
    let lists = s.stats().count("ListObjectsV2");
    // The first lookup's page and its name's LIST, three names one by one, the three
    // pages of the whole listing; a page or two more if the TTL ran out meanwhile.
    assert!(lists <= 20, "{lists} LISTs for 2,500 names: {}", m.log());
}

/// The names a readdir of `dir` on the mount shows, sorted.
fn sorted_names(m: &Mount, dir: &str) -> Vec<String> {
    let mut listed: Vec<String> = std::fs::read_dir(m.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    listed
}

/// A directory of several pages read again after the TTL is listed in segments from the
/// names of its last listing (S3's StartAfter, here through the embedded server's wire
/// protocol): the readdir shows every name once, in order, with what another client
/// changed meanwhile (names added inside a segment, more than its page holds; a name
/// deleted; a subdirectory).
#[test]
fn a_large_directory_read_again_is_listed_in_segments_and_shows_every_change() {
    let _turn = common::shared();
    let s = server();
    let mut names: Vec<String> = (0..2500).map(|i| format!("f{i:04}")).collect();
    for n in &names {
        put(&s, &format!("big/{n}"), "x");
    }
    let m = Mount::new(&s, &["--metadata-ttl", "1"]);
    assert_eq!(sorted_names(&m, "big"), names);
    for i in 0..150 {
        let name = format!("f1000x{i:03}");
        put(&s, &format!("big/{name}"), "y");
        names.push(name);
    }
    assert!(s.backend().delete_object(common::BUCKET, "big/f2000"));
    names.retain(|n| n != "f2000");
    put(&s, "big/f0500.d/inner", "z");
    names.push("f0500.d".into());
    names.sort();
    std::thread::sleep(Duration::from_millis(1500));
    s.stats().reset();
    assert_eq!(sorted_names(&m, "big"), names);
    let lists = s.stats().count("ListObjectsV2");
    // Three segments, the second grown past a page (4 LISTs); the lookups of the root and
    // of `big` after the TTL, and the prefetch of the new subdirectory, one LIST each.
    assert!(lists <= 7, "{lists} LISTs: {}", m.log());
    assert_eq!(std::fs::read_to_string(m.join("big/f0500.d/inner")).unwrap(), "z");
}

/// The same on moto, an independent S3 (its own StartAfter and pagination): a second
/// mount, as another machine, changes a directory of 2,500 files; the first mount's
/// readdir after the TTL shows exactly what the bucket holds.
#[test]
fn a_large_directory_read_again_on_moto_shows_what_another_mount_changed() {
    let _turn = common::shared();
    let moto = common::moto::Moto::shared();
    let bucket = moto.new_bucket("segments");
    let writer = Mount::moto(&moto, &bucket, &[]);
    std::fs::create_dir(writer.join("big")).unwrap();
    let mut names: Vec<String> = (0..2500).map(|i| format!("f{i:04}")).collect();
    for n in &names {
        std::fs::write(writer.join(&format!("big/{n}")), "x").unwrap();
    }
    writer.sync();
    let reader = Mount::moto(&moto, &bucket, &["--metadata-ttl", "1"]);
    assert_eq!(sorted_names(&reader, "big"), names);
    for i in 0..150 {
        let name = format!("f1000x{i:03}");
        std::fs::write(writer.join(&format!("big/{name}")), "y").unwrap();
        names.push(name);
    }
    std::fs::remove_file(writer.join("big/f2000")).unwrap();
    names.retain(|n| n != "f2000");
    std::fs::create_dir(writer.join("big/f0500.d")).unwrap();
    std::fs::write(writer.join("big/f0500.d/inner"), "z").unwrap();
    names.push("f0500.d".into());
    names.sort();
    writer.sync();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sorted_names(&reader, "big"), names, "{}", reader.log());
    assert!(!reader.log().contains("StartAfter"), "{}", reader.log());
    assert_eq!(std::fs::read_to_string(reader.join("big/f0500.d/inner")).unwrap(), "z");
}

/// A remount lists a large directory in the segments its last listing had (remembered
/// in the cache directory), at once, over the embedded server's wire protocol; what
/// changed between the mounts shows exactly: names added inside a segment past its page,
/// the very key a segment starts after deleted, a subdirectory.
#[test]
fn a_remount_lists_a_large_directory_in_the_remembered_segments_at_once() {
    let _turn = common::shared();
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    let mut names: Vec<String> = (0..2500).map(|i| format!("f{i:04}")).collect();
    for n in &names {
        put(&s, &format!("big/{n}"), "x");
    }
    let m = Mount::with_cache(&s, cache.path(), &[]);
    assert_eq!(sorted_names(&m, "big"), names);
    m.unmount();
    for i in 0..150 {
        let name = format!("f1000x{i:03}");
        put(&s, &format!("big/{name}"), "y");
        names.push(name);
    }
    // The 900th name: the key the second segment starts after.
    assert!(s.backend().delete_object(common::BUCKET, "big/f0899"));
    names.retain(|n| n != "f0899");
    put(&s, "big/f0500.d/inner", "z");
    names.push("f0500.d".into());
    names.sort();
    // Every request takes a while, so LISTs sent at once are seen at once.
    s.quirks().set_latency(Duration::from_millis(100));
    let m = Mount::with_cache(&s, cache.path(), &[]);
    s.stats().reset();
    assert_eq!(sorted_names(&m, "big"), names, "{}", m.log());
    let peak = s.stats().peak_in_flight("ListObjectsV2");
    s.quirks().set_latency(Duration::ZERO);
    // Three segments (page after page: one LIST at a time).
    assert!(peak >= 3, "{peak} LISTs at once: {:?}", s.stats().snapshot());
    assert!(!m.log().contains("StartAfter"), "{}", m.log());
    assert_eq!(std::fs::read_to_string(m.join("big/f0500.d/inner")).unwrap(), "z");
}

/// An `ls` of the root prefetches its subdirectories' first pages but HEADs none of
/// their entries (it HEADed them all, 64 at a time, in the background: 800-1,000 HEADs
/// during a write over 40 ms that followed). `ls -l` of a prefetched directory then
/// HEADs its entries, each once, and shows every entry's persisted mode.
#[test]
fn prefetched_listings_leave_their_entries_heads_to_their_readers() {
    let _turn = common::shared();
    let s = server();
    for d in ["a", "b"] {
        for i in 0..150 {
            put(&s, &format!("{d}/f{i:03}"), "x");
        }
    }
    let exe = (0o100755u32).to_string();
    s.backend()
        .put_object(common::BUCKET, "a/run.sh", "#!/bin/sh\n", &[("mode", &exe)])
        .unwrap();
    s.quirks().set_latency(std::time::Duration::from_millis(20));
    let m = Mount::new(&s, &["--metadata-ttl", "600"]);
    s.stats().reset();
    assert_eq!(std::fs::read_dir(m.path.as_path()).unwrap().count(), 2);
    // The root's listing, then one per subdirectory.
    eventually(Duration::from_secs(60), || s.stats().count("ListObjectsV2") >= 3);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The two markers the root's readdir asks for.
    let heads = s.stats().count("HeadObject");
    assert!(heads <= 2, "{heads} HEADs after ls: {:?}", s.stats().snapshot());
    let out = std::process::Command::new("ls")
        .arg("-l")
        .arg(m.join("a"))
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listing.lines().count(), 152, "{listing}");
    let run = listing.lines().find(|l| l.ends_with(" run.sh")).unwrap();
    assert!(run.starts_with("-rwxr-xr-x"), "{run}");
    let heads = s.stats().count("HeadObject");
    // a's 151 files, the markers and the lookup of a.
    assert!(
        (151..=155).contains(&heads),
        "{heads} HEADs: {:?}",
        s.stats().snapshot()
    );
}

/// A walk that reaches a directory while its prefetched listing's HEADs are still under
/// way waits for those HEADs rather than send them again: each entry is HEADed once (a
/// cold `os.walk` of 10,000 files sent 1,800-3,200 HEADs twice before).
#[test]
fn a_walk_into_directories_being_headed_in_the_background_heads_each_entry_once() {
    let _turn = common::shared();
    let s = server();
    for d in ["a", "b", "c"] {
        for i in 0..200 {
            put(&s, &format!("w/{d}/f{i:03}"), "x");
        }
    }
    s.quirks().set_latency(std::time::Duration::from_millis(20));
    let m = Mount::new(&s, &["--metadata-ttl", "600"]);
    s.stats().reset();
    // The walk: w's readdir prefetches a, b and c, whose HEADs go on in the background
    // (64 at once, 20 ms each) while `ls -l` reads each of them at once.
    for d in ["a", "b", "c"] {
        let out = std::process::Command::new("ls")
            .arg("-l")
            .arg(m.join(&format!("w/{d}")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 201);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let heads = s.stats().count("HeadObject");
    // 600 files, the markers of w, a, b and c, and the lookups' HEADs of the directories.
    assert!(
        (600..=612).contains(&heads),
        "{heads} HEADs: {:?}",
        s.stats().snapshot()
    );
}

/// A file read at random (tensors in a shuffled order) is fetched whole in the background
/// after a few jumps: the rest of the reads, in any order, cost no request.
#[test]
fn a_file_read_at_random_is_fetched_whole_and_then_costs_no_request() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(48 << 20, 11);
    put(&s, "model.bin", data.clone());
    let m = Mount::new(&s, &[]);
    let file = std::fs::File::open(m.join("model.bin")).unwrap();
    read_tensors(&file, &data, &[9, 2, 6, 0, 11]);
    // The rest arrives in the background.
    let fetched = || m.status()["fetched_bytes"].as_u64().unwrap();
    eventually(Duration::from_secs(30), || fetched() >= data.len() as u64);
    let gets = s.stats().count("GetObject");
    read_tensors(&file, &data, &[5, 1, 10, 3, 8, 4, 7]);
    assert_eq!(s.stats().count("GetObject"), gets, "{}", m.log());
}

/// Reads 64 KiB "tensors" 4 MiB apart, in `order`, and compares each with `data`: small
/// reads far apart, whose readahead covers little of the file, so the file reads as read
/// at random.
fn read_tensors(file: &std::fs::File, data: &[u8], order: &[usize]) {
    let (tensor, spacing) = (64usize << 10, 4usize << 20);
    for &i in order {
        let mut buf = vec![0u8; tensor];
        let at = i * spacing;
        file.read_exact_at(&mut buf, at as u64).unwrap();
        assert!(buf == data[at..at + tensor], "tensor {i} differs");
    }
}

/// A file read at random goes into the kernel's page cache as its whole fetch brings it:
/// the rest of the reads, in any order, reach neither the daemon nor the server, and
/// read the object's bytes.
#[test]
fn a_file_read_at_random_goes_into_the_page_cache_as_it_arrives() {
    let _turn = common::shared();
    let s = server();
    let data = pattern(48 << 20, 12);
    put(&s, "model.bin", data.clone());
    let m = Mount::new(&s, &[]);
    let file = std::fs::File::open(m.join("model.bin")).unwrap();
    read_tensors(&file, &data, &[9, 2, 6, 0, 11]);
    let pushed = || m.status()["pushed_to_kernel_bytes"].as_u64().unwrap();
    // All but the blocks the reads above brought (each with its readahead).
    eventually(Duration::from_secs(30), || pushed() >= (data.len() / 2) as u64);
    eventually(Duration::from_secs(30), || {
        let before = pushed();
        std::thread::sleep(Duration::from_millis(300));
        pushed() == before
    });
    let block_reads = || m.status_count("cache_hits") + m.status_count("cache_misses");
    let (reads, gets) = (block_reads(), s.stats().count("GetObject"));
    let mut all = Vec::new();
    let mut f = std::fs::File::open(m.join("model.bin")).unwrap();
    f.read_to_end(&mut all).unwrap();
    assert!(all == data, "the file read whole differs");
    assert_eq!(s.stats().count("GetObject"), gets, "{}", m.log());
    // A read the page cache missed is a block read of the daemon's: only the blocks the
    // first five reads touched (the kernel has the part of each it asked for; the fetch
    // leaves a block a reader touched to that reader), not the 48 of the file.
    let through_daemon = block_reads() - reads;
    assert!(
        through_daemon <= 10,
        "{through_daemon} block reads reached the daemon: {}",
        m.status()
    );
}

/// Blocks of a whole fetch still on their way never undo a write or a truncate made
/// meanwhile: a push of the old content would put it back in the page cache (and a push
/// past a truncate would grow the file in the kernel's eyes).
#[test]
fn a_write_and_a_truncate_during_a_whole_fetch_stay_as_made() {
    let _turn = common::shared();
    let s = server();
    let len = 64usize << 20;
    let data = pattern(len, 13);
    put(&s, "model.bin", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let tensors = [5usize, 1, 7, 3, 6];
    let open_reading_tensors = |path: &Path| {
        let file = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; 4096];
        for i in tensors {
            file.read_exact_at(&mut buf, (i << 23) as u64).unwrap();
        }
        file
    };
    // No passthrough: a reader passed through the disk cache's copy would refuse the
    // writer (ETXTBSY).
    let options = ["--passthrough", "false"];
    // The tensors' blocks on the disk, so that the next mount reads them without a GET
    // while the fetch of the rest (most of the file) waits on slow answers: one open
    // each, so that this mount sees no random reader and fetches no more.
    {
        let first = Mount::with_cache(&s, cache.path(), &options);
        let mut buf = vec![0u8; 4096];
        for i in tensors {
            let file = std::fs::File::open(first.join("model.bin")).unwrap();
            file.read_exact_at(&mut buf, (i << 23) as u64).unwrap();
        }
    }
    let m = Mount::with_cache(&s, cache.path(), &options);
    let path = m.join("model.bin");
    assert!(std::fs::metadata(&path).unwrap().len() == len as u64);
    s.quirks().set_latency(Duration::from_millis(700));
    let _reader = open_reading_tensors(&path);
    let writer = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut expected = data.clone();
    let stamp = pattern(4096, 14);
    for at in (0..len).step_by(256 << 10) {
        writer.write_all_at(&stamp, at as u64).unwrap();
        expected[at..at + stamp.len()].copy_from_slice(&stamp);
    }
    // Until the fetch is over: its blocks came after the writes.
    let fetched = || m.status_count("fetched_bytes");
    let before = fetched();
    assert!(
        eventually(Duration::from_secs(60), || fetched() >= before + (len / 4) as u64),
        "no fetch: {}",
        m.status()
    );
    eventually(Duration::from_secs(60), || {
        let now = fetched();
        std::thread::sleep(Duration::from_millis(1500));
        fetched() == now
    });
    let mut seen = vec![0u8; len];
    writer.read_exact_at(&mut seen, 0).unwrap();
    assert!(seen == expected, "a write was undone: {}", m.status());
    // A truncate while the fetch of the version just written is under way.
    drop(writer);
    s.quirks().set_latency(Duration::ZERO);
    m.sync();
    let _reader = open_reading_tensors(&path);
    s.quirks().set_latency(Duration::from_millis(700));
    let cut = 1usize << 20;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    s.quirks().set_latency(Duration::ZERO);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), cut as u64, "{}", m.status());
    let mut after = Vec::new();
    std::fs::File::open(&path).unwrap().read_to_end(&mut after).unwrap();
    assert!(after == expected[..cut], "the truncated file differs");
}

/// `--metrics-addr`: the page parses with Prometheus' own Python parser, and its S3
/// request counts match what the server counted during a workload; FUSE operations and
/// their errors are counted by type, every series labelled with the mount.
#[test]
fn metrics_count_what_the_server_saw_and_parse_as_prometheus_text() {
    let _turn = common::shared();
    let s = server();
    for i in 0..20 {
        put(&s, &format!("m/f{i:02}"), pattern(300_000, i as u32));
    }
    let m = Mount::new(&s, &["--metrics-addr", "127.0.0.1:0"]);
    let announced = || {
        let log = m.log();
        let addr = log.split("metrics at http://").nth(1)?.split("/metrics").next()?;
        Some(addr.to_string())
    };
    eventually(Duration::from_secs(10), || announced().is_some());
    let addr = announced().unwrap_or_else(|| panic!("no metrics address in the log: {}", m.log()));
    let scrape = || -> std::collections::HashMap<String, f64> {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut python = std::process::Command::new("python3")
            .args(["-c", PARSE_PROMETHEUS_TEXT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        python.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = python.wait_with_output().unwrap();
        assert!(out.status.success(), "the parser refused the page:\n{body}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mount = format!("mountpoint=\"{}\"", m.path.display());
    let sum = |samples: &std::collections::HashMap<String, f64>, name: &str, label: &str| -> f64 {
        samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label) && k.contains(&mount))
            .map(|(_, v)| v)
            .sum()
    };
    let before = scrape();
    let server_before = (s.stats().count("GetObject"), s.stats().count("ListObjectsV2"));
    let mut read = 0;
    for i in 0..20 {
        read += std::fs::read(m.join(&format!("m/f{i:02}"))).unwrap().len();
    }
    assert!(std::fs::metadata(m.join("m/missing")).is_err());
    // A request is counted right after its answer: the last close (no FLUSH for a
    // read-only handle) may return before the last open is counted.
    let opens = |page: &std::collections::HashMap<String, f64>| {
        let count = "s3vol_fuse_operation_duration_seconds_count";
        sum(page, count, "operation=\"open\"") - sum(&before, count, "operation=\"open\"")
    };
    let mut after = scrape();
    eventually(Duration::from_secs(10), || {
        after = scrape();
        opens(&after) >= 20.0
    });
    let delta = |name: &str, label: &str| sum(&after, name, label) - sum(&before, name, label);
    let gets = s.stats().count("GetObject") - server_before.0;
    let lists = s.stats().count("ListObjectsV2") - server_before.1;
    assert_eq!(delta("s3vol_s3_requests_total", "operation=\"GetObject\""), gets as f64);
    assert_eq!(
        delta("s3vol_s3_requests_total", "operation=\"ListObjectsV2\""),
        lists as f64
    );
    assert!(delta("s3vol_s3_received_bytes_total", "") >= read as f64);
    assert!(delta("s3vol_fuse_operations_total", "operation=\"read\"") > 0.0);
    assert!(delta("s3vol_fuse_errors_total", "errno=\"ENOENT\"") >= 1.0);
    assert!(delta("s3vol_fuse_operation_duration_seconds_count", "operation=\"open\"") >= 20.0);
    // Every read looked in memory (files after the third were fetched ahead: hits).
    let memory_lookups = sum(&after, "s3vol_cache_hits_total", "tier=\"memory\"")
        + sum(&after, "s3vol_cache_misses_total", "tier=\"memory\"");
    assert!(memory_lookups >= 20.0, "{memory_lookups}");
    assert!(sum(&after, "s3vol_memory_budget_bytes", "") > 0.0);
    // Every series the Grafana dashboard asks for is on the page.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/grafana/s3vol-dashboard.json"
    ))
    .unwrap();
    let names: BTreeSet<&str> = dashboard
        .match_indices("s3vol_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .filter(|name| *name != "s3vol_")
        .collect();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            after.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "the dashboard asks for {name}, which the page lacks"
        );
    }
}

/// Reads Prometheus text on stdin with prometheus_client's parser; prints every sample
/// as `name{labels}` -> value in JSON.
const PARSE_PROMETHEUS_TEXT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;

/// Files opened after the metadata TTL are revalidated together: the first open lists
/// their directory again and the others use that listing, rather than a HEAD each; a file
/// that changed meanwhile is read in its new version. (The kernel keeps a name for the TTL
/// from its lookup, the daemon from its listing: opens in between reach the daemon with
/// the name still cached by the kernel, as in a DataLoader's second epoch.)
#[test]
fn opens_after_the_ttl_revalidate_through_one_listing_and_see_changes() {
    let _turn = common::shared();
    let s = server();
    const FILES: usize = 30;
    for i in 0..FILES {
        put(&s, &format!("d/f{i:02}"), vec![i as u8; 100]);
    }
    use std::os::fd::{AsRawFd, FromRawFd};
    let m = Mount::new(&s, &["--metadata-ttl", "2", "--small-file-prefetch", "false"]);
    // Names are opened relative to the directory, held open: its own name in the kernel
    // is not looked up again (which would list it again anyway).
    let dir = std::fs::File::open(m.join("d")).unwrap();
    // Its lookup listed it: the daemon knows every file from now, the kernel none yet.
    let names: Vec<_> = (0..FILES)
        .map(|i| std::ffi::CString::new(format!("f{i:02}")).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(1200));
    for name in &names {
        // SAFETY: a valid directory descriptor, a NUL-terminated name, a stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, 0) }, 0);
    }
    put(&s, "d/f07", b"changed".to_vec());
    // The listing's TTL is over, the kernel's entries (from the lookups) are not.
    std::thread::sleep(Duration::from_millis(1000));
    s.stats().reset();
    let contents: Vec<_> = names
        .iter()
        .map(|name| {
            // SAFETY: as above; the descriptor returned is owned by the File.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY) };
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let mut out = Vec::new();
            f.read_to_end(&mut out).unwrap();
            out
        })
        .collect();
    let stats = s.stats().snapshot();
    assert_eq!(contents[7], b"changed", "the new version: {stats:?}");
    assert_eq!(contents[8], vec![8u8; 100]);
    assert!(
        s.stats().count("HeadObject") <= 1,
        "one listing, not a HEAD per file: {stats:?}\n{}",
        m.log()
    );
    assert!(s.stats().count("ListObjectsV2") >= 1, "{stats:?}");
}
