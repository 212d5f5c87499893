//! Process limits (issue 20 item 7): the daemon raises its open-files soft limit to the
//! hard limit, and its control socket neither spins nor dies when the daemon runs out of
//! descriptors. Both tests change limits (of this process, of the daemon) and measure
//! the daemon's CPU time: they run `alone()`.

use crate::common;

use common::{Mount, eventually, server};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// `(soft, hard)` limit on open files of `pid`, from /proc/PID/limits.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("daemon alive");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let number = |word: &str| match word {
        "unlimited" => u64::MAX,
        n => n.parse().expect("a number"),
    };
    let words: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (number(words[0]), number(words[1]))
}

fn set_own_open_files_limits(soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "setrlimit");
}

/// This process's open files limits, set back as they were when dropped: the tests that
/// run after this one in the same binary keep the limits the binary started with.
struct OwnLimits((u64, u64));

impl OwnLimits {
    fn save() -> OwnLimits {
        OwnLimits(open_files_limits(std::process::id()))
    }
}

impl Drop for OwnLimits {
    fn drop(&mut self) {
        let (soft, hard) = self.0;
        set_own_open_files_limits(soft, hard);
    }
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("daemon alive")
        .count()
}

/// User plus system CPU time the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon alive");
    // Fields after the command name (which may hold spaces) start with the state, field 3;
    // utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("tick count"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64((fields[0] + fields[1]) as f64 / ticks_per_second)
}

#[test]
fn the_daemon_raises_its_open_files_soft_limit_to_the_hard_limit() {
    let _turn = common::alone();
    let _restored = OwnLimits::save();
    let (_, hard) = open_files_limits(std::process::id());
    // A soft limit below the hard one, inherited by the daemon as from a login shell.
    let soft = (hard / 2).clamp(256, 4096);
    assert!(soft < hard, "hard limit {hard} leaves no room for a lower soft limit");
    set_own_open_files_limits(soft, hard);
    let s = server();
    let m = Mount::new(&s, &[]);
    assert_eq!(
        open_files_limits(m.pid()),
        (hard, hard),
        "the daemon's (soft, hard) open files limits; it started with soft {soft}"
    );
    assert!(m.log().contains(&format!("open files limit: {hard}")), "{}", m.log());
}

#[test]
fn the_control_socket_waits_out_a_full_descriptor_table_and_serves_again() {
    let _turn = common::alone();
    let s = server();
    let m = Mount::new(&s, &[]);
    let pid = m.pid();
    let mountpoint = std::fs::canonicalize(&m.path).expect("mountpoint");
    let socket = s3vol::control::socket_path(&mountpoint);
    // The kernel sees the mount a moment before the daemon binds its control socket.
    assert!(
        eventually(Duration::from_secs(60), || socket.exists()),
        "no control socket at {}",
        socket.display()
    );

    // A few descriptors to spare, then more connections than that: the daemon accepts
    // until its table is full, the rest wait in the listen queue (which keeps the listener
    // readable while accept() fails with EMFILE). Accepted connections are held open
    // without a command (the daemon waits 10 s for one).
    let limit = descriptors(pid) as u64 + 4;
    let limits = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit reads one rlimit through a valid pointer; the old value is not asked for.
    let set = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &limits, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let clients: Vec<UnixStream> = (0..24)
        .map(|_| UnixStream::connect(&socket).expect("connect to the control socket"))
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || descriptors(pid) as u64 >= limit),
        "the daemon never filled its descriptor table"
    );

    // Not a timing assertion: it compares the CPU the daemon used against the wall time
    // it had. Retrying accept() at once burns a core for as long as the table stays full
    // (the held connections keep it full for 10 s); waiting between attempts costs next to
    // nothing. A loaded machine can only lower what a spinning daemon gets.
    let cpu_before = cpu_time(pid);
    let wall_before = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(pid) - cpu_before;
    let had = wall_before.elapsed();
    assert!(
        used < had / 5,
        "with a full descriptor table the daemon used {used:?} of CPU in {had:?}:\n{}",
        m.log()
    );
    assert!(
        m.log().contains("control socket: accept failed"),
        "one warning names the failure:\n{}",
        m.log()
    );

    // Once the held connections go, the queued ones are accepted and answered (an empty
    // command), and the socket serves new requests.
    drop(clients);
    let reply = status_reply(&socket);
    let status: serde_json::Value = serde_json::from_str(&reply).expect("status is JSON");
    assert_eq!(status["pid"], pid, "{reply}");
}

/// One `status` request, waiting as long as the daemon's backoff may take.
fn status_reply(socket: &Path) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream.write_all(b"status\n").expect("send status");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("status reply");
    line
}
