//! Random operation sequences applied to the mount and to a local directory: after every
//! step the outcome and both trees must agree, and after a remount the bucket must hold
//! the same tree.

use crate::common;

use common::{Mount, server};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const PATHS: &[&str] = &["a", "b", "d1/a", "d1/c", "d2/b", "d1/d3/e"];
const DIRS: &[&str] = &["d1", "d2", "d1/d3"];

#[derive(Debug)]
enum Op {
    Write {
        path: &'static str,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Append {
        path: &'static str,
        len: usize,
    },
    Truncate {
        path: &'static str,
        size: u64,
    },
    Rename {
        from: &'static str,
        to: &'static str,
    },
    Unlink {
        path: &'static str,
    },
    Mkdir {
        path: &'static str,
    },
    Rmdir {
        path: &'static str,
    },
}

fn random_op(rng: &mut Rng) -> Op {
    match rng.next() % 9 {
        0..=2 => Op::Write {
            path: rng.pick(PATHS),
            offset: rng.next() % 3000,
            len: (rng.next() % 5000) as usize + 1,
            byte: rng.next() as u8,
        },
        3 => Op::Append {
            path: rng.pick(PATHS),
            len: (rng.next() % 700) as usize + 1,
        },
        4 => Op::Truncate {
            path: rng.pick(PATHS),
            size: rng.next() % 6000,
        },
        5 => {
            let all: Vec<&'static str> = PATHS.iter().chain(DIRS).copied().collect();
            Op::Rename {
                from: rng.pick(&all),
                to: rng.pick(&all),
            }
        }
        6 => Op::Unlink { path: rng.pick(PATHS) },
        7 => Op::Mkdir { path: rng.pick(DIRS) },
        _ => Op::Rmdir { path: rng.pick(DIRS) },
    }
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |rel: &str| root.join(rel);
    let r: std::io::Result<()> = match op {
        Op::Write {
            path,
            offset,
            len,
            byte,
        } => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(path))
            .and_then(|f| f.write_all_at(&vec![*byte; *len], *offset)),
        Op::Append { path, len } => OpenOptions::new()
            .append(true)
            .create(true)
            .open(p(path))
            .and_then(|mut f| f.write_all(&vec![b'+'; *len])),
        Op::Truncate { path, size } => OpenOptions::new()
            .write(true)
            .open(p(path))
            .and_then(|f| f.set_len(*size)),
        Op::Rename { from, to } => fs::rename(p(from), p(to)),
        Op::Unlink { path } => fs::remove_file(p(path)),
        Op::Mkdir { path } => fs::create_dir(p(path)),
        Op::Rmdir { path } => fs::remove_dir(p(path)),
    };
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Every path with its content (directories as `None`).
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    common::walk(root)
        .into_iter()
        .map(|rel| {
            let content = (!rel.ends_with('/')).then(|| fs::read(root.join(&rel)).expect("readable"));
            (rel, content)
        })
        .collect()
}

fn run(seed: u64, steps: usize) {
    let s = server();
    let local = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed);
    let mut m = Mount::new(&s, &[]);
    for step in 0..steps {
        let op = random_op(&mut rng);
        let want = apply(local.path(), &op);
        let got = apply(&m.path, &op);
        assert_eq!(got, want, "seed {seed} step {step}: {op:?}");
        assert_eq!(
            snapshot(&m.path),
            snapshot(local.path()),
            "seed {seed} step {step} after {op:?}"
        );
        if step % 40 == 39 {
            m.unmount();
            m = Mount::new(&s, &[]);
            // Empty directories persist as markers; everything else as objects.
            assert_eq!(
                snapshot(&m.path),
                snapshot(local.path()),
                "seed {seed} after remount at step {step}"
            );
        }
    }
}

#[test]
fn random_operations_match_a_local_directory() {
    let _turn = common::shared();
    for seed in 1u64..=6 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 200);
    }
}
