//! The command line: check, mount in the background, status, unmount, signals, and the
//! clear errors before anything is mounted.

use crate::common;

use common::{BUCKET, eventually, is_mounted, object, put, s3vol_command, server, text};
use std::process::{Command, Output};
use std::time::Duration;

fn s3vol(server: &s3vol::server::RunningServer, args: &[&str]) -> Output {
    s3vol_command(server).args(args).output().expect("run s3vol")
}

#[test]
fn check_prints_the_profile_and_the_first_keys() {
    let _turn = common::shared();
    let s = server();
    put(&s, "models/a.bin", "a");
    put(&s, "readme", "r");
    let o = s3vol(
        &s,
        &[
            "check",
            "s3://test",
            "--endpoint-url",
            &s.endpoint,
            "--force-path-style",
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for want in [
        "endpoint:     http://127.0.0.1",
        "addressing:   Path",
        "models/",
        "readme",
        "listing:      ok",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn check_fails_clearly_on_bad_input() {
    let _turn = common::shared();
    let s = server();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["check", "ftp://x"], 2, "unknown scheme"),
        (&["check", "runpod://XX-9/vol"], 2, "EU-RO-1"),
        (&["check", "s3://"], 2, "empty bucket"),
        (
            &[
                "check",
                "s3://nosuch",
                "--endpoint-url",
                &s.endpoint,
                "--force-path-style",
            ],
            1,
            "no such bucket",
        ),
        (
            &[
                "check",
                "s3://test",
                "--endpoint-url",
                "http://127.0.0.1:9",
                "--force-path-style",
                "--retries",
                "1",
            ],
            1,
            "cannot list",
        ),
    ];
    for (args, code, message) in cases {
        let o = s3vol(&s, args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {out}");
        assert!(out.contains(message), "{args:?}: expected {message:?} in {out}");
        assert_eq!(
            out.trim().lines().filter(|l| l.starts_with("s3vol:")).count(),
            1,
            "one line: {out}"
        );
    }
    let wrong = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args([
            "check",
            "s3://test",
            "--endpoint-url",
            &s.endpoint,
            "--force-path-style",
        ])
        .env("AWS_ACCESS_KEY_ID", &s.access_key)
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(text(&wrong).contains("access denied"), "{}", text(&wrong));
}

/// A background mount, undone by drop: the daemon is found through `s3vol status`.
struct Background {
    path: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Background {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).status();
        }
    }
}

impl Background {
    /// `s3vol mount s3://test` on a fresh directory, in the background (logging to a file
    /// beside it), with `extra` options; returns once the mount is live.
    fn mount(s: &s3vol::server::RunningServer, extra: &[&str]) -> Background {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let log = dir.path().join("log");
        let mut args = vec![
            "mount",
            "s3://test",
            path.to_str().unwrap(),
            "--endpoint-url",
            &s.endpoint,
            "--force-path-style",
            "--log-file",
            log.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = s3vol(s, &args);
        assert!(o.status.success(), "{}", text(&o));
        assert!(is_mounted(&path), "the mount is live when `mount` returns");
        Background { path, log, _dir: dir }
    }
}

#[test]
fn mount_in_the_background_status_and_unmount() {
    let _turn = common::shared();
    let s = server();
    put(&s, "hello.txt", "hi");
    let bg = Background::mount(&s, &[]);
    let path = bg.path.clone();
    let mp = path.to_str().unwrap();
    assert_eq!(std::fs::read_to_string(path.join("hello.txt")).unwrap(), "hi");

    let o = s3vol(&s, &["status", mp, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status[0]["source"], "s3://test");
    assert!(status[0]["requests"].as_u64().unwrap() >= 2);

    std::fs::write(path.join("new.txt"), "written").unwrap();
    let o = s3vol(&s, &["unmount", mp]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!is_mounted(&path));
    assert_eq!(object(&s, "new.txt").as_deref(), Some(&b"written"[..]));
    drop(bg);
}

#[test]
fn unmount_finishes_when_nobody_reads_its_output() {
    let _turn = common::shared();
    let s = server();
    let bg = Background::mount(&s, &["--upload-on-close", "false"]);
    let path = bg.path.clone();
    let mp = path.to_str().unwrap();
    std::fs::write(path.join("late.txt"), "deferred").unwrap();
    // Standard output is a pipe nobody reads: every line unmount prints fails (EPIPE).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["unmount", mp])
        .stdout(writer)
        .output()
        .expect("run s3vol");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!is_mounted(&path));
    assert_eq!(object(&s, "late.txt").as_deref(), Some(&b"deferred"[..]));
    drop(bg);
}

#[test]
fn mount_refuses_what_cannot_work_before_mounting() {
    let _turn = common::shared();
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("x"), "x").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let ep = s.endpoint.clone();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["s3://test".into(), busy.display().to_string()], "not empty"),
        (
            vec!["s3://test".into(), dir.path().join("missing").display().to_string()],
            "No such file",
        ),
        (
            vec!["s3://nosuch".into(), empty.display().to_string()],
            "no such bucket",
        ),
        (
            vec!["hf://only-namespace".into(), empty.display().to_string()],
            "empty bucket",
        ),
    ];
    for (args, message) in cases {
        let mut full = vec!["mount".to_string()];
        full.extend(args.clone());
        full.extend(["--endpoint-url".into(), ep.clone(), "--force-path-style".into()]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let o = s3vol(&s, &refs);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(message),
            "{args:?}: expected {message:?} in {}",
            text(&o)
        );
        assert!(!is_mounted(&empty));
    }
}

#[test]
fn sigterm_uploads_dirty_data_then_unmounts() {
    let _turn = common::shared();
    let s = server();
    let m = common::Mount::new(&s, &["--upload-on-close", "false"]);
    // Slow uploads: dirty data is still pending when the signal arrives.
    s.quirks().set_latency(Duration::from_millis(50));
    let mut files = Vec::new();
    for i in 0..50 {
        let p = m.join(&format!("f{i}"));
        std::fs::write(&p, format!("{i}")).unwrap();
        files.push(p);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    eventually(Duration::from_secs(30), || !is_mounted(&m.path));
    assert!(!is_mounted(&m.path), "SIGTERM unmounts");
    for i in 0..50 {
        assert_eq!(
            object(&s, &format!("f{i}")),
            Some(i.to_string().into_bytes()),
            "f{i} in {BUCKET}"
        );
    }
    assert!(m.unmount().contains("signal received"));
}

/// `s3vol mount -f ... 2>&1 | tee log`, then the reader of stderr goes away (tee exits
/// on Ctrl-C first): the daemon still stops on SIGINT and SIGTERM, and unmounts. Log lines
/// it cannot write are dropped, never fatal.
#[test]
fn a_daemon_whose_stderr_is_gone_still_stops_on_sigint_and_sigterm() {
    let _turn = common::shared();
    let s = server();
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM] {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut m = common::Mount::with_stderr(&s, &[], writer.into());
        drop(reader);
        // Requests log (debug is on): those lines now meet a closed pipe.
        std::fs::write(m.join("f"), "x").unwrap();
        assert_eq!(std::fs::read(m.join("f")).unwrap(), b"x");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid() as i32), signal).unwrap();
        let status = m.wait_exit(Duration::from_secs(60));
        assert!(status.is_some(), "{signal}: the daemon must exit");
        assert!(!is_mounted(&m.path), "{signal}: unmounted");
        assert_eq!(object(&s, "f").as_deref(), Some(&b"x"[..]));
    }
}

/// A program with a file open in the mount (or its working directory there) makes the
/// unmount busy: a signal still ends the daemon. The mount is detached from the tree, the
/// open file keeps working, and the daemon uploads it and exits once it is closed.
#[test]
fn a_signal_detaches_a_busy_mount_and_exits_when_its_last_file_closes() {
    let _turn = common::shared();
    use std::io::Write;
    let s = server();
    let mut m = common::Mount::new(&s, &[]);
    let mut held = std::fs::File::create(m.join("held")).unwrap();
    held.write_all(b"before").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    eventually(Duration::from_secs(30), || !is_mounted(&m.path));
    assert!(!is_mounted(&m.path), "the busy mount is detached: {}", m.log());
    assert!(
        m.wait_exit(Duration::from_millis(500)).is_none(),
        "it serves the open file"
    );
    held.write_all(b" and after").unwrap();
    drop(held);
    assert!(
        m.wait_exit(Duration::from_secs(30)).is_some(),
        "exits after the last close"
    );
    assert_eq!(object(&s, "held").as_deref(), Some(&b"before and after"[..]));
    assert!(m.log().contains("was busy"), "{}", m.log());
}

#[test]
fn sighup_reopens_the_log_file() {
    let _turn = common::shared();
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s3vol.log");
    let m = common::Mount::new(&s, &["--log-file", log.to_str().unwrap()]);
    let rotated = dir.path().join("s3vol.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("log file reopened")),
        "no new log file after SIGHUP"
    );
    assert!(std::fs::read_to_string(&rotated).unwrap().contains("mounted s3://test"));
    assert!(is_mounted(&m.path), "SIGHUP does not unmount");
}

/// `s3vol demo` in a child process; unmounted and stopped on drop.
struct Demo {
    child: std::process::Child,
    path: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- s3vol demo log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.path).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn demo_prints_commands_that_run_as_printed() {
    let _turn = common::shared();
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // A space and a quote in the path: the printed commands must quote it.
    let path = dir.path().join("my demo's mount");
    let log = dir.path().join("demo.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .arg("demo")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start s3vol demo");
    let stdout = child.stdout.take().unwrap();
    let demo = Demo {
        child,
        path: path.clone(),
        log,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("demo output after {printed:?}: {e}"));
        if line == "Ctrl-C unmounts." {
            break;
        }
        printed.push(line);
    }
    assert!(is_mounted(&path), "the demo is mounted when it prints what to try");
    let commands: Vec<&str> = printed.iter().filter_map(|l| l.strip_prefix("  ")).collect();
    assert!(
        commands.iter().any(|c| c.contains(" status ")),
        "no status command in {printed:?}"
    );
    for command in &commands {
        // From another directory, with nothing of ours on PATH.
        let o = Command::new("sh")
            .args(["-c", command])
            .current_dir("/")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .output()
            .expect("run sh");
        assert!(o.status.success(), "`{command}` failed:\n{}", text(&o));
        if command.contains(" status ") {
            assert!(text(&o).contains("s3://demo on "), "{}", text(&o));
        }
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    eventually(Duration::from_secs(30), || !is_mounted(&path));
    assert!(!is_mounted(&path), "Ctrl-C unmounts");
    drop(demo);
}

#[test]
fn a_cache_directory_others_can_write_or_own_is_refused() {
    let _turn = common::shared();
    use std::os::unix::fs::PermissionsExt;
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let mount = || {
        s3vol(
            &s,
            &[
                "mount",
                "s3://test",
                mp.to_str().unwrap(),
                "--endpoint-url",
                &s.endpoint,
                "--force-path-style",
                "--cache-dir",
                cache.to_str().unwrap(),
            ],
        )
    };
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = mount();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for part in [cache.to_str().unwrap(), "mode 0777", "chmod 700", "--cache-dir"] {
        assert!(text(&o).contains(part), "{part:?} missing: {}", text(&o));
    }
    assert!(!is_mounted(&mp));
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Another user's directory, where this test may give it away (as root).
    if nix::unistd::chown(&cache, Some(nix::unistd::Uid::from_raw(65534)), None).is_ok() {
        let o = mount();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("belongs to uid 65534"), "{}", text(&o));
        assert!(!is_mounted(&mp));
    }
}

#[test]
fn a_cache_directory_only_others_can_read_is_made_private() {
    let _turn = common::shared();
    use std::os::unix::fs::PermissionsExt;
    let s = server();
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir(cache.path().join("journal")).unwrap();
    for dir in [cache.path().to_path_buf(), cache.path().join("journal")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bg = Background::mount(&s, &["--cache-dir", cache.path().to_str().unwrap()]);
    for dir in [cache.path().to_path_buf(), cache.path().join("journal")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    let text = std::fs::read_to_string(&bg.log).unwrap();
    assert_eq!(text.matches("made private").count(), 1, "one line: {text}");
    drop(bg);
}

#[test]
fn unmount_refuses_a_live_mount_whose_control_socket_is_gone() {
    let _turn = common::shared();
    let s = server();
    let bg = Background::mount(&s, &[]);
    let socket = s3vol::control::socket_path(&std::fs::canonicalize(&bg.path).unwrap());
    std::fs::remove_file(&socket).unwrap();
    let o = s3vol(&s, &["unmount", bg.path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("live s3vol mount") && text(&o).contains(socket.to_str().unwrap()),
        "{}",
        text(&o)
    );
    assert!(is_mounted(&bg.path), "not unmounted without its flush");
    drop(bg);
}
