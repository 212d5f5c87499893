//! The shared cache tier (`--shared-cache`): two mounts of one source, each with its own
//! local cache directory, and the tier on a second S3 server.

use crate::common;

use common::{BUCKET, Mount, eventually, pattern, put, server};
use s3vol::server::RunningServer;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn tier_args(tier: &RunningServer) -> Vec<String> {
    vec![
        "--shared-cache".into(),
        format!("s3://{BUCKET}/team"),
        "--shared-cache-endpoint-url".into(),
        tier.endpoint.clone(),
    ]
}

fn mount_with_tier(origin: &RunningServer, tier: &RunningServer, extra: &[&str]) -> Mount {
    let args = tier_args(tier);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(extra);
    Mount::new(origin, &all)
}

/// Keys under the tier's prefix (every source's blocks).
fn tier_keys(tier: &RunningServer) -> Vec<String> {
    let mut keys = tier.backend().keys(BUCKET);
    keys.retain(|k| k.starts_with("team/"));
    keys
}

fn tier_blocks(tier: &RunningServer) -> usize {
    tier_keys(tier).len()
}

/// A first machine: `data` put at the origin as `name` and read whole through a mount
/// with the tier, whose unmount lets the blocks still queued for the tier go out. Returns
/// the mount's log.
fn first_machine_reads(origin: &RunningServer, tier: &RunningServer, name: &str, data: &[u8]) -> String {
    put(origin, name, data.to_vec());
    let first = mount_with_tier(origin, tier, &[]);
    assert!(read(&first.join(name)) == data);
    first.unmount()
}

/// Reads `path` whole with a fresh handle.
fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_second_machine_reads_from_the_tier_not_the_origin() {
    let _turn = common::shared();
    let (origin, tier) = (server(), server());
    let data = pattern(64 * MIB, 1);
    let log = first_machine_reads(&origin, &tier, "big.bin", &data);
    assert_eq!(tier_blocks(&tier), 64, "the first mount shares what it fetched\n{log}");
    assert!(
        tier_keys(&tier).iter().all(|key| key.starts_with("team/s3vol-")),
        "under the source's own directory"
    );

    origin.stats().reset();
    let second = mount_with_tier(&origin, &tier, &[]);
    assert!(read(&second.join("big.bin")) == data);
    let from_origin = origin.stats().object_bytes_sent();
    assert!(
        from_origin < MIB as u64,
        "{from_origin} bytes of the file came from the origin\n{}",
        second.log()
    );
    assert_eq!(second.status_count("shared_hits"), 64);
    assert_eq!(second.status_count("shared_bytes"), 64 * MIB as u64);
}

#[test]
fn an_object_replaced_at_the_origin_is_read_fresh_and_bad_blocks_are_ignored() {
    let _turn = common::shared();
    let (origin, tier) = (server(), server());
    let old = pattern(8 * MIB, 2);
    first_machine_reads(&origin, &tier, "f.bin", &old);
    assert!(tier_blocks(&tier) >= 8);

    // Replaced at the origin, same size: the tier's blocks are of the old version.
    let new = pattern(8 * MIB, 3);
    put(&origin, "f.bin", new.clone());
    let second = mount_with_tier(&origin, &tier, &[]);
    assert!(
        read(&second.join("f.bin")) == new,
        "the new version, not the shared old one"
    );

    // Blocks of the new version in the tier, then every one of them damaged or swapped.
    assert!(eventually(Duration::from_secs(30), || tier_blocks(&tier) >= 16));
    let keys = tier_keys(&tier);
    let bodies: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| tier.backend().get_object(BUCKET, k).unwrap().body.to_vec())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let mut bad = bodies[(i + 1) % bodies.len()].clone();
        if i % 2 == 0 {
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
        }
        put_tier(&tier, key, bad);
    }
    let third = mount_with_tier(&origin, &tier, &[]);
    assert!(read(&third.join("f.bin")) == new);
    assert_eq!(third.status_count("shared_hits"), 0);
    assert!(third.status_count("shared_rejected") >= 8, "{}", third.log());
}

fn put_tier(tier: &RunningServer, key: &str, body: Vec<u8>) {
    tier.backend().put_object(BUCKET, key, body, &[]).unwrap();
}

#[test]
fn the_tier_going_down_or_stalling_mid_read_changes_nothing_but_speed() {
    let _turn = common::shared();
    let (origin, tier) = (server(), server());
    let data = pattern(32 * MIB, 4);
    first_machine_reads(&origin, &tier, "f.bin", &data);
    assert!(tier_blocks(&tier) >= 32);

    // A tier that stalls: every answer held far beyond the tier's timeout. The first
    // read is small, so that the prefetch has not reached the far end of the file.
    let second = mount_with_tier(&origin, &tier, &[]);
    let file = std::fs::File::open(second.join("f.bin")).unwrap();
    let mut head = vec![0u8; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    assert!(head[..] == data[..4096]);
    assert!(second.status_count("shared_hits") >= 1, "{}", second.log());
    tier.quirks().set_latency(Duration::from_secs(120));
    let mut tail = vec![0u8; 8 * MIB];
    file.read_exact_at(&mut tail, 24 * MIB as u64).unwrap();
    assert!(tail[..] == data[24 * MIB..]);
    assert!(second.status_count("shared_errors") >= 1, "{}", second.log());
    assert!(read(&second.join("f.bin")) == data);

    // A tier that is gone.
    drop(tier);
    let gone = server();
    let third = mount_with_tier(&origin, &gone, &[]);
    drop(gone);
    assert!(read(&third.join("f.bin")) == data);
}

#[test]
fn a_read_only_mount_reads_the_tier_and_never_writes_it() {
    let _turn = common::shared();
    let (origin, tier) = (server(), server());
    first_machine_reads(&origin, &tier, "a.bin", &pattern(4 * MIB, 5));
    put(&origin, "b.bin", pattern(4 * MIB, 6));
    assert!(tier_blocks(&tier) >= 4);
    tier.stats().reset();
    let reader = mount_with_tier(
        &origin,
        &tier,
        &["--shared-cache-read-only", "--shared-cache-confirm-origin"],
    );
    assert!(read(&reader.join("a.bin")) == pattern(4 * MIB, 5));
    assert!(read(&reader.join("b.bin")) == pattern(4 * MIB, 6));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reader.status_count("shared_hits"), 4);
    assert_eq!(tier.stats().count("PutObject"), 0, "{:?}", tier.stats().snapshot());
}

#[test]
fn prune_keeps_the_most_recently_written_blocks() {
    let _turn = common::shared();
    let (origin, tier) = (server(), server());
    put(&origin, "old.bin", pattern(4 * MIB, 7));
    put(&origin, "new.bin", pattern(4 * MIB, 8));
    let m = mount_with_tier(&origin, &tier, &[]);
    assert!(read(&m.join("old.bin")).len() == 4 * MIB);
    assert!(eventually(Duration::from_secs(30), || tier_blocks(&tier) >= 4));
    // Last-Modified has a resolution of a second.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(read(&m.join("new.bin")).len() == 4 * MIB);
    assert!(eventually(Duration::from_secs(30), || tier_blocks(&tier) >= 8));
    put_tier(&tier, "team/notes.txt", b"not a block".to_vec());
    let before = tier_keys(&tier);

    let prune = |extra: &[&str]| {
        let limit = (4 * MIB + 4 * 64 + 1000).to_string();
        let mut args = vec![
            "shared-cache",
            "prune",
            "s3://test/team",
            "--endpoint-url",
            &tier.endpoint,
            "--region",
            "us-east-1",
            "--max-size",
            &limit,
        ];
        args.extend(extra);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_s3vol"));
        cmd.args(&args)
            .env("AWS_ACCESS_KEY_ID", &tier.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &tier.secret_key);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
        common::text(&out)
    };
    let dry = prune(&["--dry-run"]);
    assert!(dry.contains("would delete 4"), "{dry}");
    assert_eq!(tier_keys(&tier), before);
    let done = prune(&[]);
    assert!(done.contains("kept 4") && done.contains("deleted 4"), "{done}");
    assert_eq!(
        tier_blocks(&tier),
        5,
        "the 4 newest blocks and the file that is not a block"
    );

    // What was pruned comes from the origin again, and is shared again.
    let other = mount_with_tier(&origin, &tier, &[]);
    assert!(read(&other.join("old.bin")) == pattern(4 * MIB, 7));
    assert!(read(&other.join("new.bin")) == pattern(4 * MIB, 8));
    assert_eq!(other.status_count("shared_hits"), 4);
}
