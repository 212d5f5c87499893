//! Faults through a real mount: injected 502/503/500 answers, connections reset mid-body,
//! stalled bodies, added latency and a server that goes away. Every file operation runs
//! with a deadline ([`BOUND`]): it completes with the right bytes, or fails with EIO once
//! the retry budget (`--retries 3`, set by the harness) is spent; none hangs. A lost
//! server makes calls fail in bounded time, and the mount recovers when it comes back.

use crate::common;

use common::{BUCKET, Mount, close, object, pattern, put, server, stop_injecting};
use s3vol::server::{InjectedFailure, RequestFilter, RunningServer, ServerConfig, start_blocking};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

/// The longest any single file operation may take here. Retries (3 attempts, jittered
/// backoff of at most a few hundred ms) and the short timeouts below end well before.
const BOUND: Duration = Duration::from_secs(60);

/// Short timeouts, so that spending the retry budget takes seconds, not minutes.
const SHORT_TIMEOUTS: &[&str] = &["--read-timeout", "1", "--connect-timeout", "1"];

const FAILURES: [InjectedFailure; 3] = [
    InjectedFailure::BadGateway,
    InjectedFailure::SlowDown,
    InjectedFailure::InternalError,
];

/// A stall no test waits out: a read that does not time out and resume fails [`BOUND`].
const FOREVER: Duration = Duration::from_secs(3600);

/// Runs `f` in a thread and waits at most [`BOUND`] for it.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    common::within(what, BOUND, f)
}

fn read(path: PathBuf) -> io::Result<Vec<u8>> {
    within(&format!("reading {}", path.display()), move || fs::read(path))
}

/// create, write, close; the close's error is the upload's.
fn write(path: PathBuf, data: Vec<u8>) -> io::Result<()> {
    within(&format!("writing {}", path.display()), move || {
        let mut f = File::create(path)?;
        f.write_all(&data)?;
        close(f)
    })
}

/// Opens an existing file for writing and fsyncs it: uploads what is still pending.
fn fsync(path: PathBuf) -> io::Result<()> {
    within(&format!("fsync of {}", path.display()), move || {
        let f = OpenOptions::new().write(true).open(path)?;
        f.sync_all()?;
        close(f)
    })
}

fn stat(path: PathBuf) -> io::Result<fs::Metadata> {
    within(&format!("stat of {}", path.display()), move || fs::metadata(path))
}

#[track_caller]
fn assert_eio<T: std::fmt::Debug>(result: io::Result<T>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
        Ok(v) => panic!("{what}: succeeded ({v:?}) although every attempt failed"),
    }
}

#[track_caller]
fn assert_bytes(got: io::Result<Vec<u8>>, want: &[u8], what: &str) {
    let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        got == want,
        "{what}: {} bytes differ from the {} expected",
        got.len(),
        want.len()
    );
}

/// Metadata is not cached (TTL 0), so every lookup asks the server: these tests are about
/// what happens to requests, and a cached listing would answer without one. close() waits
/// for the upload, so its outcome is close()'s (the background mode's retries are tested
/// in `writeback/`).
fn mount(s: &RunningServer, extra: &[&str]) -> Mount {
    let mut args = SHORT_TIMEOUTS.to_vec();
    args.extend(["--metadata-ttl", "0", "--upload-mode", "on-close"]);
    args.extend(extra);
    Mount::new(s, &args)
}

fn inject(s: &RunningServer, count: u32, failure: InjectedFailure, operation: &str) {
    s.quirks()
        .inject_errors(count, failure, RequestFilter::Operation(operation.into()));
}

#[test]
fn reads_writes_and_lookups_survive_errors_within_the_retry_budget() {
    let _turn = common::shared();
    let s = server();
    for i in 0..FAILURES.len() {
        put(&s, &format!("r{i}"), pattern(2 << 20, i as u32));
    }
    let m = mount(&s, &[]);
    for (i, failure) in FAILURES.into_iter().enumerate() {
        // Two failures, then success: the third and last attempt gets through.
        inject(&s, 2, failure, "GetObject");
        assert_bytes(
            read(m.join(&format!("r{i}"))),
            &pattern(2 << 20, i as u32),
            &format!("read under {failure:?}"),
        );

        inject(&s, 2, failure, "PutObject");
        let data = pattern(100_000, 10 + i as u32);
        write(m.join(&format!("w{i}")), data.clone()).unwrap_or_else(|e| panic!("write under {failure:?}: {e}"));
        assert!(
            object(&s, &format!("w{i}")) == Some(data),
            "w{i} uploaded under {failure:?}"
        );

        // A name created by another client after the mount: LIST and HEAD fail first.
        put(&s, &format!("late{i}"), "late");
        s.quirks().inject_errors(2, failure, RequestFilter::Any);
        let meta = stat(m.join(&format!("late{i}"))).unwrap_or_else(|e| panic!("lookup under {failure:?}: {e}"));
        assert_eq!(meta.len(), 4);
    }
}

#[test]
fn multipart_uploads_survive_errors_on_every_step() {
    let _turn = common::shared();
    let s = server();
    let m = mount(&s, &["--part-size", "1MiB", "--max-put-size", "1MiB"]);
    let steps = ["CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"];
    for (i, (step, failure)) in steps.iter().zip(FAILURES).enumerate() {
        inject(&s, 2, failure, step);
        let data = pattern((5 << 20) + 1234, 20 + i as u32);
        write(m.join(&format!("big{i}")), data.clone()).unwrap_or_else(|e| panic!("{step} under {failure:?}: {e}"));
        assert!(
            object(&s, &format!("big{i}")) == Some(data),
            "big{i}: {step} under {failure:?}"
        );
    }
    assert!(
        s.backend().pending_uploads(BUCKET).is_empty(),
        "no multipart upload left behind"
    );
}

#[test]
fn a_spent_retry_budget_is_eio_and_nothing_is_lost() {
    let _turn = common::alone();
    let s = server();
    let data = pattern(3 << 20, 1);
    put(&s, "big", data.clone());
    let m = mount(&s, &[]);

    inject(&s, u32::MAX, InjectedFailure::BadGateway, "GetObject");
    assert_eio(read(m.join("big")), "read while every GET fails");
    stop_injecting(&s);
    assert_bytes(read(m.join("big")), &data, "read after the server recovered");

    s.stats().reset();
    inject(&s, u32::MAX, InjectedFailure::SlowDown, "PutObject");
    let written = pattern(200_000, 2);
    assert_eio(
        write(m.join("w"), written.clone()),
        "close while every PUT is throttled",
    );
    assert_eq!(s.stats().count("PutObject"), 3, "--retries 3: three attempts, no more");
    assert_bytes(read(m.join("w")), &written, "the data stays readable in the mount");
    stop_injecting(&s);
    fsync(m.join("w")).expect("the next fsync uploads the kept data");
    assert!(object(&s, "w") == Some(written), "uploaded at the retry");
}

#[test]
fn connections_reset_mid_body_are_resumed_or_eio() {
    let _turn = common::shared();
    let s = server();
    let (f, g) = (pattern(4 << 20, 3), pattern(4 << 20, 4));
    put(&s, "f", f.clone());
    put(&s, "g", g.clone());
    let m = mount(&s, &[]);

    s.quirks().reset_mid_body(2, 100_000);
    assert_bytes(read(m.join("f")), &f, "read through two resets");

    s.quirks().reset_mid_body(u32::MAX, 1000);
    assert_eio(read(m.join("g")), "read while every body is cut");
    s.quirks().reset_mid_body(0, 0);
    assert_bytes(read(m.join("g")), &g, "read after the resets stopped");
}

#[test]
fn stalled_bodies_time_out_and_resume_or_eio() {
    let _turn = common::shared();
    let s = server();
    let (f, g) = (pattern(3 << 20, 5), pattern(3 << 20, 6));
    put(&s, "f", f.clone());
    put(&s, "g", g.clone());
    let m = mount(&s, &[]);

    // Stalled for an hour after 100 kB: only a read timeout and a resumed GET finish it.
    s.quirks().stall_body(1, 100_000, FOREVER);
    assert_bytes(read(m.join("f")), &f, "read through a stalled body");

    s.quirks().stall_body(u32::MAX, 0, FOREVER);
    assert_eio(read(m.join("g")), "read while every body stalls");
    s.quirks().stall_body(0, 0, Duration::ZERO);
    assert_bytes(read(m.join("g")), &g, "read after the stalls stopped");
}

/// A read waits for the bytes it asks for, not for the whole block they are in: on a slow
/// link the first kilobytes of a block arrive long before its last ones.
#[test]
fn a_read_is_answered_from_the_first_bytes_of_a_block() {
    let _turn = common::shared();
    let s = server();
    let f = pattern(4 << 20, 8);
    put(&s, "f", f.clone());
    // A long read timeout: waiting for the whole block would be a 30 s wait, then a second
    // GET for the rest.
    let m = Mount::new(&s, &["--read-timeout", "30"]);
    stat(m.join("f")).expect("lookup");
    let gets = s.stats().count("GetObject");
    s.quirks().stall_body(1, 200_000, FOREVER);
    let head = within("reading the first bytes of a stalled block", {
        let path = m.join("f");
        move || -> io::Result<Vec<u8>> {
            let mut buf = vec![0u8; 4096];
            let n = std::os::unix::fs::FileExt::read_at(&File::open(path)?, &mut buf, 0)?;
            buf.truncate(n);
            Ok(buf)
        }
    });
    assert_bytes(head, &f[..4096], "first 4 KiB");
    assert_eq!(
        s.stats().count("GetObject"),
        gets + 1,
        "the read was answered while its GET was still stalled"
    );
    s.quirks().stall_body(0, 0, Duration::ZERO);
}

#[test]
fn latency_slows_requests_down_and_too_much_of_it_is_eio() {
    let _turn = common::shared();
    let s = server();
    put(&s, "d/f", pattern(1 << 20, 7));
    let m = mount(&s, &[]);

    s.quirks().set_latency(Duration::from_millis(300));
    assert_bytes(read(m.join("d/f")), &pattern(1 << 20, 7), "read with latency");
    write(m.join("d/g"), b"slow".to_vec()).expect("write with latency");
    let names = within("listing with latency", {
        let d = m.join("d");
        move || fs::read_dir(d).map(|d| d.count())
    });
    assert_eq!(names.expect("listing with latency"), 2);
    within("rename with latency", {
        let (from, to) = (m.join("d/g"), m.join("d/h"));
        move || fs::rename(from, to)
    })
    .expect("rename with latency");
    assert_eq!(object(&s, "d/h").as_deref(), Some(&b"slow"[..]));

    // Every answer comes after the read timeout: each attempt times out. (A name in the
    // root, whose listing is not cached.)
    s.quirks().set_latency(Duration::from_secs(5));
    assert_eio(stat(m.join("new")), "lookup while every answer is late");
    s.quirks().set_latency(Duration::ZERO);
    put(&s, "new", "n");
    assert_eq!(stat(m.join("new")).expect("lookup once answers are on time").len(), 1);
}

#[test]
fn a_lost_server_fails_calls_in_bounded_time_and_the_mount_recovers() {
    let _turn = common::shared();
    let s = server();
    let addr = s.addr;
    let kept = pattern(1 << 20, 8);
    put(&s, "kept", kept.clone());
    let m = mount(&s, &[]);
    write(m.join("before"), b"before".to_vec()).expect("write while the server is up");
    let mut open = File::create(m.join("during")).expect("create while the server is up");

    drop(s); // Connections are refused from now on.
    assert_eio(
        stat(m.join("never-seen")),
        "lookup without a server (not ENOENT: nothing is known)",
    );
    // Creating needs a lookup, which fails: the caller knows at once.
    assert_eio(write(m.join("new"), b"x".to_vec()), "create without a server");
    let during = pattern(300_000, 9);
    let closed = within("write and close without a server", {
        let during = during.clone();
        move || open.write_all(&during).and_then(|()| close(open))
    });
    assert_eio(closed, "close without a server");
    assert_bytes(
        read(m.join("during")),
        &during,
        "data written without a server stays readable",
    );

    // The server comes back on the same address with the same data and credentials.
    let s = start_blocking(ServerConfig {
        addr,
        min_part_size: 0,
        ..ServerConfig::default()
    });
    s.backend().create_bucket(BUCKET);
    put(&s, "kept", kept.clone());
    put(&s, "before", "before");
    std::thread::sleep(Duration::from_millis(1100)); // the harness's --metadata-ttl 1
    let missing = stat(m.join("never-seen")).expect_err("no such object");
    assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
    assert_bytes(read(m.join("kept")), &kept, "read after the server came back");
    fsync(m.join("during")).expect("the kept data uploads once the server is back");
    write(m.join("after"), b"after".to_vec()).expect("write after the server came back");
    let log = m.unmount();
    assert!(
        object(&s, "during") == Some(during),
        "written while the server was away:\n{log}"
    );
    assert_eq!(object(&s, "after").as_deref(), Some(&b"after"[..]));
    assert!(!log.contains("panicked"), "{log}");
}
