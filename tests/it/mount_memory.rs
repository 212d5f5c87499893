//! The memory budget holds: writing and reading 1 GiB through a mount with a small
//! `--memory-limit` keeps the daemon's peak RSS bounded.

use crate::common;

use common::{Mount, object, pattern, peak_rss_mib, server};
use std::io::{Read, Write};

const LIMIT_MIB: u64 = 128;
/// Runtime, SDK, FUSE buffers and allocator slack beyond the budget.
const OVERHEAD_MIB: u64 = 160;

#[test]
fn a_1_gib_write_and_read_stay_within_the_memory_budget() {
    let _turn = common::alone();
    let s = server();
    let m = Mount::new(&s, &["--memory-limit", &format!("{LIMIT_MIB}MiB")]);
    let chunk = pattern(1 << 20, 42);
    let mut f = std::fs::File::create(m.join("big")).unwrap();
    for i in 0..1024u32 {
        let mut c = chunk.clone();
        c[..4].copy_from_slice(&i.to_le_bytes());
        f.write_all(&c).unwrap();
    }
    drop(f);
    // The upload follows close(): the peak counts it once it is over.
    m.sync();
    let after_write = peak_rss_mib(m.pid());

    let stored = object(&s, "big").expect("uploaded");
    assert_eq!(stored.len(), 1 << 30);
    for (i, c) in stored.chunks(1 << 20).enumerate() {
        assert_eq!(&c[..4], &(i as u32).to_le_bytes(), "chunk {i}");
        assert!(c[4..] == chunk[4..], "chunk {i} differs");
    }
    drop(stored);

    let mut f = std::fs::File::open(m.join("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..1024u32 {
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..4], &i.to_le_bytes());
    }
    let after_read = peak_rss_mib(m.pid());
    eprintln!("peak RSS: {after_write} MiB after the write, {after_read} MiB after the read");
    assert!(
        after_read <= LIMIT_MIB + OVERHEAD_MIB,
        "peak RSS {after_read} MiB is over {LIMIT_MIB} MiB + {OVERHEAD_MIB} MiB overhead"
    );
}
