//! Real programs (tar, rsync, git, python venv, sqlite3, an editor's save, two mounts of
//! one bucket, a lock-file loop) against real mounts on moto server, each compared with
//! the same tree on a local directory or checked after a remount: what users run on a
//! bucket, checked the way they would notice breakage.
//!
//! moto must be installed (`pip install "moto[server]"`): without it these tests fail, as
//! the other moto tests do. tar, rsync, git, python3, sqlite3 and GNU coreutils/diffutils
//! must be on PATH. The lock-file test runs on the embedded server, which counts requests.

use crate::common;

use common::Mount;
use common::moto::Moto;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `cmd` and returns its output, whatever its exit status.
fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, panics with its output unless it exits 0; returns its stdout.
fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program that may not even start (a file that lost its executable bit):
/// its stdout when it exits 0, else what went wrong.
fn exec(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!("{cmd:?} exited {}:\n{}", out.status, describe(&out))),
        Err(e) => Err(format!("{cmd:?} did not start: {e}")),
    }
}

/// The last 80 lines of a mount's log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn describe(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `bash -o pipefail -c script` with `args` as `$1`, `$2`, ...
fn bash(script: &str, args: &[&Path]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-o", "pipefail", "-c", script, "bash"]).args(args);
    cmd
}

/// `python3 -c script` with `args` as `sys.argv[1:]`.
fn python(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).args(args);
    cmd
}

/// Sets the mtime of `path` (not following a symlink) to `secs` since the epoch.
fn set_mtime(path: &Path, secs: u64) {
    must(Command::new("touch").args(["-h", "-d", &format!("@{secs}")]).arg(path));
}

/// A source tree with what archives carry besides bytes: modes 0600, 0640 and 0755,
/// a 0700 directory, nested directories, an empty file, relative and dangling symlinks,
/// and mtimes in the past (distinct per file).
fn build_tree(root: &Path) {
    let file = |rel: &str, body: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    fs::create_dir_all(root.join("sub/deep")).unwrap();
    fs::create_dir_all(root.join("private")).unwrap();
    file("readme.txt", b"hello from the archive\n", 0o644);
    file("secret.key", b"-----BEGIN KEY-----\nnot really\n", 0o600);
    file("tool.sh", b"#!/bin/sh\necho tool\n", 0o755);
    file("empty", b"", 0o644);
    file("private/inner.txt", b"only for the owner\n", 0o640);
    file("sub/deep/data.bin", &common::pattern(100 << 10, 7), 0o644);
    symlink("readme.txt", root.join("link-to-readme")).unwrap();
    symlink("../tool.sh", root.join("sub/rel-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    // The root is archived as `.`: give it ordinary permissions (a temp dir is 0700).
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    for (i, rel) in [
        "readme.txt",
        "secret.key",
        "tool.sh",
        "empty",
        "private/inner.txt",
        "sub/deep/data.bin",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&root.join(rel), 1_600_000_000 + 86_400 * i as u64);
    }
}

/// Every entry under `root` (relative, sorted), from find(1).
fn entries(root: &Path) -> Vec<String> {
    let out = must(
        Command::new("find")
            .arg(root)
            .args(["-mindepth", "1", "-printf", "%P\\n"]),
    );
    let mut list: Vec<String> = out.lines().map(str::to_owned).collect();
    list.sort();
    list
}

/// One line per entry: `name type mode mtime`, the mtime of directories and symlinks
/// left out (tar and rsync set a directory's mtime after filling it, and nobody reads a
/// symlink's own mtime).
fn stat_lines(root: &Path, rels: &[String]) -> String {
    let out = run(Command::new("stat")
        .current_dir(root)
        .args(["-c", "%n\t%F\t%a\t%Y"])
        .args(rels));
    let mut lines = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let mtime = if f[1] == "directory" || f[1] == "symbolic link" {
            "-"
        } else {
            f[3]
        };
        lines.push_str(&format!("{} | {} | {} | {}\n", f[0], f[1], f[2], mtime));
    }
    // A name stat could not find shows up here.
    lines.push_str(&String::from_utf8_lossy(&out.stderr));
    lines
}

/// `diff -r --no-dereference a b`: bytes, names and symlink targets; "" when equal.
fn diff_trees(a: &Path, b: &Path) -> String {
    let out = run(Command::new("diff").arg("-r").arg("--no-dereference").arg(a).arg(b));
    if out.status.success() {
        String::new()
    } else {
        format!("diff exited {}:\n{}", out.status, describe(&out))
    }
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A tree unpacked by `tar -xp` onto the mount keeps, after a remount, every byte, every
/// mode (0600 keys, 0755 scripts, a 0700 directory), every file's mtime and every
/// symlink. Guards against metadata that lives only in the mount's memory: a restored
/// backup whose scripts are no longer executable, whose keys become world-readable, or
/// whose symlinks come back as small text files.
#[test]
fn tar_round_trip_keeps_modes_mtimes_and_symlinks_after_a_remount() {
    let _turn = common::shared();
    let moto = Moto::shared();
    let bucket = moto.new_bucket("tar");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);

    let m = Mount::moto(&moto, &bucket, &[]);
    must(&mut bash(
        r#"tar -C "$1" -cf - . | tar -C "$2" -xpf -"#,
        &[&src, &m.path],
    ));
    let before = m.unmount();

    after_remounts(&moto, &bucket, &before, |m| {
        let rels = entries(&src);
        let diff = diff_trees(&src, &m.path);
        let want = stat_lines(&src, &rels);
        let got = stat_lines(&m.path, &rels);
        let link = fs::read_link(m.join("link-to-readme")).map(|t| t.to_string_lossy().into_owned());
        let mut failures = Vec::new();
        if !diff.is_empty() {
            failures.push(format!("trees differ: {diff}"));
        }
        if want != got {
            failures.push(format!(
                "stat (name | type | mode | mtime) differs\n--- source ---\n{want}--- mount ---\n{got}"
            ));
        }
        if link.as_deref().ok() != Some("readme.txt") {
            failures.push(format!("readlink link-to-readme: {link:?}, want \"readme.txt\""));
        }
        failures
    });
}

/// `tar -c` of directories the bucket holds without markers (a dataset another tool
/// uploaded) exits 0 with nothing on stderr, and the archive unpacks to the mount's bytes.
/// tar compares a directory's ctime before and after reading it: guards against the
/// mount's guess of a directory's time, replaced by what its listing shows while tar
/// reads it, failing every backup with "file changed as we read it" (exit status 1).
#[test]
fn tar_of_directories_without_markers_sees_them_unchanged() {
    let _turn = common::shared();
    let s = common::server();
    for d in 0..3u32 {
        for f in 0..4u32 {
            common::put(
                &s,
                &format!("data/d{d}/f{f}.bin"),
                common::pattern(1000 + f as usize, d * 10 + f),
            );
        }
    }
    let m = Mount::new(&s, &[]);
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("data.tar");
    let out = run(Command::new("tar")
        .arg("-C")
        .arg(m.join("data"))
        .arg("-cf")
        .arg(&archive)
        .args(["d0", "d1", "d2"]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let unpacked = work.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    must(Command::new("tar").arg("-C").arg(&unpacked).arg("-xf").arg(&archive));
    let diff = diff_trees(&m.join("data"), &unpacked);
    let log = m.unmount();
    assert!(
        out.status.success() && stderr.is_empty() && diff.is_empty(),
        "tar -c of three directories: {}\ndiff against the mount: {diff}\n--- s3vol log (end) ---\n{}",
        describe(&out),
        tail(&log)
    );
}

/// `rsync -a` onto the mount, then after a remount a checksum dry run finds nothing to
/// transfer. Guards against backups that rsync copies again in full every night (lost
/// mtimes or modes make every file look changed) and against symlinks that rsync would
/// recreate.
#[test]
fn rsync_finds_nothing_to_do_after_a_remount() {
    let _turn = common::shared();
    let moto = Moto::shared();
    let bucket = moto.new_bucket("rsync");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let from = format!("{}/", src.display());

    let m = Mount::moto(&moto, &bucket, &[]);
    let to = format!("{}/", m.path.display());
    must(Command::new("rsync").args(["-a", &from, &to]));
    let before = m.unmount();

    after_remounts(&moto, &bucket, &before, |m| {
        let to = format!("{}/", m.path.display());
        // Directory mtimes are left out (--omit-dir-times): the mount's root is no object,
        // so its mtime cannot outlive the mount, and a directory's mtime changing costs
        // rsync only a utimes, never a transfer. Everything else must match: content (-c),
        // mode, mtime of files, symlinks, owner.
        let itemized = must(Command::new("rsync").args(["-anc", "--itemize-changes", "--omit-dir-times", &from, &to]));
        // Without --omit-dir-times, only lines about directory times are tolerated (and shown).
        let all = must(Command::new("rsync").args(["-anc", "--itemize-changes", &from, &to]));
        let beyond_dir_times: Vec<&str> = all
            .lines()
            .filter(|l| !(l.starts_with(".d") && l.get(..11).is_some_and(|f| f[2..].trim_matches('.') == "t")))
            .collect();
        if !all.is_empty() {
            eprintln!("directory mtimes rsync would set again (tolerated):\n{all}");
        }
        if itemized.is_empty() && beyond_dir_times.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "rsync would change things\n\
             --- rsync -anc --itemize-changes --omit-dir-times ---\n{itemized}\
             --- rsync -anc --itemize-changes ---\n{all}\
             --- stat (name | type | mode | mtime), source ---\n{}\
             --- mount ---\n{}",
            stat_lines(&src, &entries(&src)),
            stat_lines(&m.path, &entries(&src)),
        )]
    });
}

/// `git clone` onto the mount, remount: the work tree is clean and the executable script
/// still runs. Guards against repositories that show every script as modified (lost
/// executable bit), symlinks turned into files, or an index git cannot read back.
#[test]
fn git_clone_is_clean_and_runs_its_script_after_a_remount() {
    let _turn = common::shared();
    let moto = Moto::shared();
    let bucket = moto.new_bucket("git");
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    fs::create_dir(&repo).unwrap();
    fs::write(repo.join("README.md"), "# a repository\n").unwrap();
    fs::write(repo.join("run.sh"), "#!/bin/sh\necho ok\n").unwrap();
    fs::set_permissions(repo.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("README.md", repo.join("link")).unwrap();
    let git = || {
        let mut cmd = Command::new("git");
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"]);
        cmd
    };
    must(git().arg("-C").arg(&repo).args(["init", "-q"]));
    must(git().arg("-C").arg(&repo).args(["add", "."]));
    must(git().arg("-C").arg(&repo).args(["commit", "-q", "-m", "first"]));

    let m = Mount::moto(&moto, &bucket, &[]);
    // A file:// URL: the transport of a network clone (packs, no hard links).
    must(
        git()
            .args(["clone", "-q"])
            .arg(format!("file://{}", repo.display()))
            .arg(m.join("clone")),
    );
    let before = m.unmount();

    after_remounts(&moto, &bucket, &before, |m| {
        let clone = m.join("clone");
        let status = run(git().arg("-C").arg(&clone).args(["status", "--porcelain"]));
        let script = exec(&mut Command::new(clone.join("run.sh")));
        let mut failures = Vec::new();
        if !status.status.success() || !status.stdout.is_empty() || !status.stderr.is_empty() {
            failures.push(format!(
                "git status --porcelain is not empty ({}):\n{}\n--- git diff ---\n{}",
                status.status,
                describe(&status),
                String::from_utf8_lossy(&run(git().arg("-C").arg(&clone).args(["diff"])).stdout)
            ));
        }
        if script.as_deref() != Ok("ok\n") {
            failures.push(format!("clone/run.sh: {script:?}"));
        }
        if !failures.is_empty() {
            let rels: Vec<String> = ["README.md", "run.sh", "link"].map(String::from).to_vec();
            failures.push(format!(
                "--- stat (name | type | mode | mtime), repository ---\n{}--- clone ---\n{}",
                stat_lines(&repo, &rels),
                stat_lines(&clone, &rels)
            ));
        }
        failures
    });
}

/// A Python virtual environment created on the mount still runs after a remount. Guards
/// against `venv/bin/python` (a symlink to the interpreter) coming back as a regular
/// file: "Permission denied" or "Exec format error" for every job started from the venv.
#[test]
fn python_venv_runs_after_a_remount() {
    let _turn = common::shared();
    let moto = Moto::shared();
    let bucket = moto.new_bucket("venv");
    let m = Mount::moto(&moto, &bucket, &[]);
    must(
        Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(m.join("venv")),
    );
    let link = fs::read_link(m.join("venv/bin/python")).expect("venv/bin/python is a symlink");
    let before = m.unmount();

    after_remounts(&moto, &bucket, &before, |m| {
        let out = exec(Command::new(m.join("venv/bin/python")).args(["-c", "print(42)"]));
        if out.as_deref() == Ok("42\n") {
            return Vec::new();
        }
        let bin = m.join("venv/bin");
        let rels: Vec<String> = names(&bin).into_iter().collect();
        vec![format!(
            "venv/bin/python -c 'print(42)': {out:?}\n\
             readlink before the remount: {}; after: {:?}\n--- stat venv/bin ---\n{}",
            link.display(),
            fs::read_link(m.join("venv/bin/python")),
            stat_lines(&bin, &rels)
        )]
    });
}

/// One SQLite database with the default rollback journal and one in WAL mode, filled in
/// several transactions, pass `integrity_check` with every row after a remount. Guards
/// against databases corrupted by a journal that was renamed, truncated or deleted out of
/// order, or by writes at offsets that did not reach the bucket.
#[test]
fn sqlite_databases_survive_a_remount_intact() {
    let _turn = common::shared();
    let moto = Moto::shared();
    let bucket = moto.new_bucket("sqlite");
    let fill = "create table t(id integer primary key, v text);\n".to_owned()
        + &(0..4)
            .map(|i| {
                format!(
                    "begin;\nwith recursive n(x) as (select 1 union all select x + 1 from n where x < 250)\n\
                     insert into t(v) select printf('row %d of batch {i}, %s', x, hex(randomblob(40))) from n;\ncommit;\n"
                )
            })
            .collect::<String>();
    let m = Mount::moto(&moto, &bucket, &[]);
    let sqlite = |db: &str, sql: &str| must(Command::new("sqlite3").arg(m.join(db)).arg(sql));
    sqlite("rollback.db", &fill);
    // WAL keeps its index in `-shm`, shared through mmap; a FUSE file can be mmapped
    // shared, so WAL runs as it does on a local disk (no locking_mode=exclusive).
    let mode = sqlite("wal.db", "pragma journal_mode=wal;");
    assert_eq!(mode.trim(), "wal", "journal_mode=wal was refused");
    sqlite("wal.db", &fill);
    let before = m.unmount();

    after_remounts(&moto, &bucket, &before, |m| {
        let mut failures = Vec::new();
        for db in ["rollback.db", "wal.db"] {
            let out = run(Command::new("sqlite3")
                .arg(m.join(db))
                .arg("pragma integrity_check; select count(*) from t;"));
            if !out.status.success() || out.stdout != b"ok\n1000\n" {
                failures.push(format!(
                    "{db}, integrity_check; count(*) ({}):\n{}",
                    out.status,
                    describe(&out)
                ));
            }
        }
        if !failures.is_empty() {
            let left: Vec<String> = names(&m.path)
                .into_iter()
                .filter(|n| n.ends_with("-journal") || n.ends_with("-wal") || n.ends_with("-shm"))
                .collect();
            failures.push(format!("left beside the databases: {left:?}"));
        }
        failures
    });
}

/// An editor's save (write `f.txt.tmp`, fsync it, rename it over `f.txt`) leaves the new
/// content under the old name and no temporary file after a remount. Guards against saves
/// that come back as the previous version or leave `.tmp` files behind.
#[test]
fn editor_save_by_rename_keeps_the_new_content_after_a_remount() {
    let _turn = common::shared();
    let moto = Moto::shared();
    let bucket = moto.new_bucket("editor");
    let m = Mount::moto(&moto, &bucket, &[]);
    fs::create_dir(m.join("notes")).unwrap();
    fs::write(m.join("notes/f.txt"), "the old text\n").unwrap();
    must(&mut python(
        r#"
import os, sys
path = sys.argv[1]
tmp = path + ".tmp"
with open(tmp, "w") as f:
    f.write("the new text, saved the way editors save\n")
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, path)
"#,
        &[&m.join("notes/f.txt").to_string_lossy()],
    ));
    let before = m.unmount();

    after_remounts(&moto, &bucket, &before, |m| {
        let content = fs::read_to_string(m.join("notes/f.txt"));
        let listing = names(&m.join("notes"));
        if content.as_deref().ok() == Some("the new text, saved the way editors save\n")
            && listing == BTreeSet::from(["f.txt".to_owned()])
        {
            return Vec::new();
        }
        vec![format!("notes/f.txt is {content:?}, notes/ holds {listing:?}")]
    });
}

/// Mounts the bucket again twice, on one new cache directory: first every file is HEADed
/// for its mode, owner and mtime, then what those HEADs found is remembered (no HEAD per
/// file). `check` returns what it found wrong after each; the test fails with it and the
/// end of the first mount's log.
fn after_remounts(moto: &Moto, bucket: &str, first_log: &str, check: impl Fn(&Mount) -> Vec<String>) {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().to_str().unwrap();
    for remount in ["the remount", "a second remount, metadata remembered"] {
        let m = Mount::moto(moto, bucket, &["--cache-dir", cache_arg]);
        let failures = check(&m);
        if !failures.is_empty() {
            eprintln!("--- log of the first mount (end) ---\n{}", tail(first_log));
            panic!("after {remount}:\n{}", failures.join("\n\n"));
        }
        m.unmount();
    }
}

/// `cat path` in a new process: (exit status, stdout, stderr).
fn cat(path: &Path) -> (bool, String, String) {
    let out = run(Command::new("cat").arg(path));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two mounts of one bucket, each with its own cache directory, `--metadata-ttl 1`:
/// A, then `setup` on A, then B (so B's first look at the bucket finds what `setup`
/// made). Returns the server, the bucket's name and the mounts A and B.
fn two_mounts(stem: &str, setup: impl FnOnce(&Mount)) -> (std::sync::Arc<Moto>, String, Mount, Mount) {
    two_mounts_with(stem, &[], setup)
}

/// `two_mounts` with `a_extra` options on mount A.
fn two_mounts_with(
    stem: &str,
    a_extra: &[&str],
    setup: impl FnOnce(&Mount),
) -> (std::sync::Arc<Moto>, String, Mount, Mount) {
    let moto = Moto::shared();
    let bucket = moto.new_bucket(stem);
    let a = Mount::moto(&moto, &bucket, &[&["--metadata-ttl", "1"], a_extra].concat());
    setup(&a);
    // Another machine sees what is in the bucket: A's uploads follow its closes.
    a.sync();
    let b = Mount::moto(&moto, &bucket, &["--metadata-ttl", "1"]);
    (moto, bucket, a, b)
}

/// A file replaced through mount B is what a new `cat` on mount A prints once the
/// metadata TTL has passed, also when A had read (and cached) the old version. Guards
/// against a node that keeps serving a stale copy of a file another machine rewrote.
#[test]
fn a_file_replaced_on_another_mount_is_seen_after_the_ttl() {
    let _turn = common::shared();
    let old = "first version, written through A\n";
    let new = "second version, written through mount B, longer than the first\n";
    let (_moto, _bucket, a, b) = two_mounts("ttl", |a| fs::write(a.join("x"), old).unwrap());
    assert_eq!(cat(&a.join("x")), (true, old.to_owned(), String::new()));
    fs::write(b.join("x"), new).unwrap();
    b.sync();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cat(&a.join("x")),
        (true, new.to_owned(), String::new()),
        "cat x on A 2 s after B replaced it (TTL 1 s)"
    );
}

/// A chmod made through mount B shows on mount A once the metadata TTL has passed, in `ls
/// -l` (a listing) and in `stat` (a lookup), for files and for the directory (its
/// marker), although no object's content, hence no ETag, changed: only their metadata and
/// LastModified did. Guards against a mount that trusts an ETag alone to vouch for
/// persisted modes, or a listing that shows the marker's new version.
#[test]
fn a_chmod_on_another_mount_is_seen_after_the_ttl() {
    let _turn = common::shared();
    let (_moto, _bucket, a, b) = two_mounts("chmod", |a| {
        fs::create_dir(a.join("d")).unwrap();
        for name in ["listed.sh", "looked-up.sh", "kept"] {
            fs::write(a.join(&format!("d/{name}")), "echo hi\n").unwrap();
        }
    });
    let mode = |m: &Mount, rel: &str| fs::symlink_metadata(m.join(rel)).unwrap().permissions().mode() & 0o7777;
    let ls_l = |m: &Mount| must(Command::new("ls").arg("-l").arg(m.join("d")));
    // Once the TTL has passed, A learns each entry's version from the bucket (the
    // listing of d its revalidation makes); B changes modes in a later second (versions
    // are compared in whole seconds).
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(mode(&a, "d"), 0o755);
    for name in ["listed.sh", "looked-up.sh", "kept"] {
        assert_eq!(mode(&a, &format!("d/{name}")), 0o644);
    }
    std::thread::sleep(Duration::from_millis(1100));
    for name in ["listed.sh", "looked-up.sh"] {
        fs::set_permissions(b.join(&format!("d/{name}")), fs::Permissions::from_mode(0o750)).unwrap();
    }
    fs::set_permissions(b.join("d"), fs::Permissions::from_mode(0o711)).unwrap();
    b.sync();
    std::thread::sleep(Duration::from_secs(2));
    // A lookup first (no listing of d in between), then a listing.
    assert_eq!(
        mode(&a, "d/looked-up.sh"),
        0o750,
        "stat on A 2 s after B's chmod (TTL 1 s)"
    );
    assert_eq!(
        mode(&a, "d"),
        0o711,
        "stat d on A after B's chmod of the directory (its marker)"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let listing = ls_l(&a);
    let listed = listing.lines().find(|l| l.ends_with(" listed.sh")).unwrap_or_default();
    assert!(
        listed.starts_with("-rwxr-x---"),
        "ls -l on A after B's chmod (TTL 1 s):\n{listing}"
    );
    assert_eq!(mode(&a, "d/kept"), 0o644);
}

/// Right after mount B replaces files (within A's metadata TTL), a new `cat` of each on
/// mount A succeeds with the old or the new content, never an error: a new open is not a
/// reader that saw the old version. Guards against ESTALE/EIO in jobs that read a file
/// another node just rewrote (checkpoints, configs, datasets being refreshed).
#[test]
fn a_fresh_open_right_after_a_remote_replace_never_fails() {
    let _turn = common::shared();
    let old = |i: usize| format!("old content of z{i}\n");
    let new = |i: usize| format!("new content of z{i}, written through mount B\n");
    let (_moto, _bucket, a, b) = two_mounts("fresh", |a| {
        fs::create_dir(a.join("d")).unwrap();
        for i in 0..6 {
            fs::write(a.join(&format!("d/z{i}")), old(i)).unwrap();
        }
    });
    // A knows every file's version: z0..z2 only by stat, z3..z5 also by their content.
    for i in 0..6 {
        let path = a.join(&format!("d/z{i}"));
        assert_eq!(fs::metadata(&path).unwrap().len(), old(i).len() as u64);
        if i >= 3 {
            assert_eq!(fs::read_to_string(&path).unwrap(), old(i));
        }
    }
    let replaced = Instant::now();
    for i in 0..6 {
        fs::write(b.join(&format!("d/z{i}")), new(i)).unwrap();
    }
    b.sync();
    let mut failures = Vec::new();
    for i in 0..6 {
        let (ok, out, err) = cat(&a.join(&format!("d/z{i}")));
        if !ok || (out != old(i) && out != new(i)) {
            failures.push(format!("z{i}: ok={ok} stdout={out:?} stderr={err:?}"));
        }
    }
    let elapsed = replaced.elapsed();
    assert!(
        failures.is_empty(),
        "cat on A right after B replaced the files ({elapsed:?} after the first replace, TTL 1 s):\n{}",
        failures.join("\n")
    );
}

/// A writes to a file it opened before B replaced it: afterwards the bucket holds B's
/// version under the name and A's version beside it as `NAME.s3vol-conflict-*`. Guards
/// against a lost update: two nodes editing one file, one of them silently overwriting
/// the other's work.
#[test]
fn a_write_racing_a_remote_replace_keeps_both_versions() {
    let _turn = common::shared();
    racing_write_keeps_both_versions("conflict", &[]);
}

/// The same where the provider does not honour If-Match on uploads: a HEAD just before the
/// upload finds the change.
#[test]
fn a_write_racing_a_remote_replace_keeps_both_versions_without_conditional_writes() {
    let _turn = common::shared();
    racing_write_keeps_both_versions("conflict-head", &["--conditional-writes", "false"]);
}

fn racing_write_keeps_both_versions(stem: &str, a_extra: &[&str]) {
    let (moto, bucket, a, b) = two_mounts_with(stem, a_extra, |a| {
        fs::create_dir(a.join("docs")).unwrap();
        fs::write(a.join("docs/y"), "original y\n").unwrap();
    });
    let a_text = "A's edit of y, longer than the original\n";
    let b_text = "B's replacement of y\n";

    // What Python's open(path, "r+b") does: O_RDWR, no truncation.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.join("docs/y"))
        .unwrap();
    fs::write(b.join("docs/y"), b_text).unwrap();
    b.sync();
    let wrote = f.write_all_at(a_text.as_bytes(), 0);
    // close() may report the conflict or succeed: only what is kept is checked.
    let closed = {
        use std::os::fd::IntoRawFd;
        let fd = f.into_raw_fd();
        // SAFETY: `fd` is an open descriptor this function owns (taken from `f`).
        if unsafe { libc::close(fd) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    eprintln!("A's write: {wrote:?}, A's close: {closed:?}");
    // The upload follows close(): once it is over, `s3vol status` counts the conflict.
    a.sync();
    let status = run(Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["status", "--json"])
        .arg(&a.path));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let status_conflicts = status[0].get("conflicts").and_then(serde_json::Value::as_u64);
    let log_a = a.unmount();
    let log_b = b.unmount();

    // A fresh mount shows what the bucket holds.
    let c = Mount::moto(&moto, &bucket, &[]);
    let listing = names(&c.join("docs"));
    let y = fs::read_to_string(c.join("docs/y"));
    let conflicts: Vec<(String, std::io::Result<String>)> = listing
        .iter()
        .filter(|n| n.starts_with("y.s3vol-conflict-"))
        .map(|n| (n.clone(), fs::read_to_string(c.join("docs").join(n))))
        .collect();
    let kept_a = conflicts.iter().any(|(_, body)| body.as_deref().ok() == Some(a_text));
    if y.as_deref().ok() != Some(b_text) || !kept_a || status_conflicts != Some(1) {
        eprintln!(
            "--- log of mount A (end) ---\n{}\n--- log of mount B (end) ---\n{}",
            tail(&log_a),
            tail(&log_b)
        );
        panic!(
            "after A wrote to y opened before B replaced it (A's write {wrote:?}, close {closed:?}):\n\
             docs/ holds {listing:?}\ny = {y:?} (want B's {b_text:?})\n\
             conflict copies: {conflicts:?} (want one with A's {a_text:?})\n\
             conflicts in A's status: {status_conflicts:?} (want 1)"
        );
    }
}

/// huggingface_hub's file lock (the `filelock` package) opens its lock file with
/// O_RDWR|O_CREAT|O_TRUNC and fchmods it to 0644 at every acquire, then closes it at
/// release. On an already empty 0644 file these change nothing: they must cost no upload
/// or metadata copy. Guards against a download of N files from the Hub turning into
/// thousands of PutObject/CopyObject requests (and their cost and rate limits). Runs on
/// the embedded server, which counts requests by operation.
#[test]
fn a_lock_file_loop_uploads_nothing() {
    let _turn = common::shared();
    let s = common::server();
    let m = Mount::new(&s, &[]);
    fs::create_dir(m.join(".locks")).unwrap();
    let lock = m.join(".locks/model.safetensors.lock");
    let lock = lock.to_string_lossy();
    let acquire_release = r#"
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fchmod(fd, 0o644)
    os.close(fd)
    time.sleep(0.05)
"#;
    // The first acquire creates the lock file (an upload, not counted).
    must(&mut python(acquire_release, &[&lock, "1"]));
    s.stats().reset();
    must(&mut python(acquire_release, &[&lock, "40"]));
    let log = m.unmount();
    let counts = s.stats().snapshot();
    let writes: u64 = ["PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart"]
        .iter()
        .map(|op| s.stats().count(op))
        .sum();
    assert_eq!(
        writes,
        0,
        "40 no-op acquire/release cycles of a lock file sent writes; requests at the server \
         during the loop and the unmount: {counts:?}\n--- s3vol log (end) ---\n{}",
        tail(&log)
    );
}
