//! A userspace WAN link for `bench/run` on kernels without `sch_netem`.
//!
//! Creates two TUN devices and forwards every IP packet between them after a fixed
//! one-way delay, through a rate limiter with a bounded queue (tail drop), in each
//! direction: what `tc qdisc ... netem delay D rate R limit L` does on a veth pair. The
//! script moves one device into the server's network namespace, so the host's TCP
//! stack and the server's see a real round trip of 2 x delay.
//!
//! The devices carry a virtio-net header (IFF_VNET_HDR) and accept TSO/checksum offload,
//! so TCP hands over segments of up to 64 KiB and one forwarded "packet" is often many
//! wire packets: that keeps the packet rate, and the CPU this program takes from the
//! benchmark, low at 1 Gbit/s. The header is passed through unchanged; the receiving
//! stack accepts the large segment as a GRO'd one.
//!
//! Std only, built by bench/run with `rustc -O`:
//!
//!     delayline HOST_DEV NS_DEV DELAY_MS RATE_MBIT QUEUE_MS
//!
//! prints "ready" once both devices exist, then runs until killed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const IFF_TUN: i16 = 0x0001;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUN_F_CSUM: u64 = 0x01;
const TUN_F_TSO4: u64 = 0x02;
const TUN_F_TSO6: u64 = 0x04;
const TUN_F_TSO_ECN: u64 = 0x08;
/// virtio_net_hdr (the default TUNSETVNETHDRSZ).
const VNET_HDR_LEN: usize = 10;

unsafe extern "C" {
    fn ioctl(fd: i32, request: u64, ...) -> i32;
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

fn open_tun(name: &str) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap_or_else(|e| die(&format!("/dev/net/tun: {e}")));
    let mut request = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    if name.len() >= 16 {
        die(&format!("device name too long: {name}"));
    }
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which IfReq lays out.
    if unsafe { ioctl(file.as_raw_fd(), TUNSETIFF, &mut request as *mut IfReq) } != 0 {
        die(&format!("TUNSETIFF {name}: {}", std::io::Error::last_os_error()));
    }
    let offload = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { ioctl(file.as_raw_fd(), TUNSETOFFLOAD, offload) } != 0 {
        die(&format!("TUNSETOFFLOAD {name}: {}", std::io::Error::last_os_error()));
    }
    file
}

fn die(message: &str) -> ! {
    eprintln!("delayline: {message}");
    std::process::exit(1)
}

struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

/// One direction: a reader that stamps each packet with its release time (the end of its
/// transmission at `rate`, plus the delay) or drops it when the queue is longer than
/// `queue`, and a writer that sleeps until each release time.
fn forward(
    mut from: File,
    mut to: File,
    delay: Duration,
    bytes_per_sec: f64,
    queue: Duration,
    counters: Arc<Counters>,
) {
    let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        for (release, packet) in receiver {
            let now = Instant::now();
            if release > now {
                thread::sleep(release - now);
            }
            // A full or vanished device drops the packet, as a wire would.
            let _ = to.write(&packet);
        }
    });
    let mut link_free_at = Instant::now();
    let mut buffer = vec![0u8; 65536 + VNET_HDR_LEN + 256];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let now = Instant::now();
        let start = link_free_at.max(now);
        if start - now > queue {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let wire_bytes = n.saturating_sub(VNET_HDR_LEN) as f64;
        link_free_at = start + Duration::from_secs_f64(wire_bytes / bytes_per_sec);
        counters.packets.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(wire_bytes as u64, Ordering::Relaxed);
        if sender.send((link_free_at + delay, buffer[..n].to_vec())).is_err() {
            return;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host_dev, ns_dev, delay_ms, rate_mbit, queue_ms] = args.as_slice() else {
        die("usage: delayline HOST_DEV NS_DEV DELAY_MS RATE_MBIT QUEUE_MS");
    };
    let number = |text: &str| -> f64 { text.parse().unwrap_or_else(|_| die(&format!("not a number: {text}"))) };
    let delay = Duration::from_secs_f64(number(delay_ms) / 1000.0);
    let bytes_per_sec = number(rate_mbit) * 1e6 / 8.0;
    let queue = Duration::from_secs_f64(number(queue_ms) / 1000.0);

    let host = open_tun(host_dev);
    let ns = open_tun(ns_dev);
    println!("ready");
    std::io::stdout().flush().ok();

    let directions = [
        ("to-server", Arc::new(Counters::new())),
        ("to-host", Arc::new(Counters::new())),
    ];
    let (host_reader, ns_writer) = (host.try_clone().unwrap(), ns.try_clone().unwrap());
    let up = Arc::clone(&directions[0].1);
    let down = Arc::clone(&directions[1].1);
    thread::spawn(move || forward(host_reader, ns_writer, delay, bytes_per_sec, queue, up));
    thread::spawn(move || forward(ns, host, delay, bytes_per_sec, queue, down));

    // A line of counters now and then, when they changed: drops mean the queue overflowed.
    let mut last = Vec::new();
    loop {
        thread::sleep(Duration::from_secs(30));
        let line: Vec<String> = directions
            .iter()
            .map(|(name, c)| {
                format!(
                    "{name}: {} packets, {} MB, {} dropped",
                    c.packets.load(Ordering::Relaxed),
                    c.bytes.load(Ordering::Relaxed) / 1_000_000,
                    c.dropped.load(Ordering::Relaxed)
                )
            })
            .collect();
        if line != last {
            eprintln!("delayline: {}", line.join("; "));
            last = line;
        }
    }
}

impl Counters {
    fn new() -> Self {
        Counters {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}
