//! Model-based property test of the filesystem core (no FUSE): random operation
//! sequences run against `Fs` over a `MemoryStore` behind the capability gate of a
//! provider's profile (AWS, CoreWeave, Runpod, Hugging Face: `SOURCES`) and against a
//! reference model, the bucket as a map of keys to bytes. Between operations another client
//! changes the bucket directly (puts, deletes, markers). After every step the core must
//! report what the model says: the errno of the operation, every name (lookup), every
//! file's bytes (read), every directory's entries (readdir), and the bucket must hold
//! exactly the model's keys.
//!
//! Hugging Face forbids `dir/` marker keys, and the model follows README's rule for it:
//! mkdir puts nothing in the bucket, and "an empty directory lives in the mount only until
//! a file is written into it" (`Model::mount_only`); the other client's marker puts are
//! refused by the gate (its plain puts and deletes go on). HF keeps no user metadata
//! either, which changes nothing here: the model compares kinds, sizes, bytes and names,
//! never modes, owners or mtimes (and makes no symlinks).
//!
//! Each run picks an upload mode too (`MODES`): with `UploadMode::Background`, the
//! default, close() returns once the changes are journaled and uploads, markers and
//! deletes go out in the background. The mount must show the model meanwhile: the check
//! after each step looks at the core first, then waits for the bucket
//! (`Fs::sync_all(Settle::Uploaded)`), compares it with the model and looks at the core
//! again. Another client changes the bucket only once it is settled (it sees only what
//! is uploaded).
//!
//! The harness plays the kernel's part where the VFS decides before calling the filesystem
//! (EEXIST for mkdir of an existing name, EINVAL for a rename into its own subtree, a
//! rename onto itself). `metadata_ttl` is zero, so out-of-band changes are visible at once.
//! Small blocks and parts make every file of a few KiB cross block and part boundaries
//! (multipart uploads, UploadPartCopy).
//!
//! `PROPTEST_CASES=N` runs more cases; a failure prints the shrunk operation sequence.

use crate::common;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use s3vol::fs::{Caller, Errno, Fs, FsConfig, Kind, OpenMode, ROOT_INO, SetAttr, Settle, UploadMode};
use s3vol::provider::{Overrides, Resolved};
use s3vol::source::Source;
use s3vol::store::memory::MemoryStore;
use s3vol::store::{Gated, ObjectStore, PutOptions, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod model;
mod scenarios;

use model::{Model, split};

/// Names of the path universe operations pick from (with every path the model holds).
const NAMES: &[&str] = &["a", "b", "c"];
const BLOCK: u64 = 4096;
const CALLER: Caller = Caller { uid: 0, gid: 0 };

/// Picks a path at run time: an index into the paths known at that step, so sequences
/// stay meaningful (and shrink) whatever the earlier steps did.
#[derive(Debug, Clone, Copy)]
struct Pick(usize);

#[derive(Debug, Clone)]
enum Op {
    /// open (create if missing, O_TRUNC if asked), pwrite, close.
    Write {
        path: Pick,
        offset: u16,
        len: u16,
        seed: u8,
        truncate: bool,
    },
    /// truncate(2) of a file that is not open.
    Truncate {
        path: Pick,
        size: u16,
    },
    Unlink {
        path: Pick,
    },
    Mkdir {
        path: Pick,
    },
    Rmdir {
        path: Pick,
    },
    Rename {
        from: Pick,
        to: Pick,
    },
    /// Another client writes an object (a `dir/` marker if `marker`).
    RemotePut {
        path: Pick,
        len: u16,
        seed: u8,
        marker: bool,
    },
    /// Another client deletes an object (a `dir/` marker if `marker`).
    RemoteDelete {
        path: Pick,
        marker: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let pick = || (0..64usize).prop_map(Pick);
    prop_oneof![
        4 => (pick(), 0..12_000u16, 0..12_000u16, any::<u8>(), any::<bool>())
            .prop_map(|(path, offset, len, seed, truncate)| Op::Write { path, offset, len, seed, truncate }),
        1 => (pick(), 0..14_000u16).prop_map(|(path, size)| Op::Truncate { path, size }),
        1 => pick().prop_map(|path| Op::Unlink { path }),
        2 => pick().prop_map(|path| Op::Mkdir { path }),
        1 => pick().prop_map(|path| Op::Rmdir { path }),
        2 => (pick(), pick()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => (pick(), 0..10_000u16, any::<u8>(), any::<bool>())
            .prop_map(|(path, len, seed, marker)| Op::RemotePut { path, len, seed, marker }),
        1 => (pick(), any::<bool>()).prop_map(|(path, marker)| Op::RemoteDelete { path, marker }),
    ]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// The core under test, with the kernel's path walk.
struct Core {
    fs: Arc<Fs>,
    /// The bucket, behind the gate of the provider's profile as the core sees it.
    store: Arc<Gated<MemoryStore>>,
    upload_mode: UploadMode,
    _cache: tempfile::TempDir,
}

/// The providers the model runs against: the store obeys each one's profile (no
/// DeleteObjects, UploadPartCopy or conditional writes on Runpod; RenameObject on
/// CoreWeave; on Hugging Face no markers, user metadata, UploadPartCopy or RenameObject,
/// so that mkdir makes a directory of the mount only: `Model::mount_only`).
const SOURCES: &[&str] = &["s3://b", "cw://b", "runpod://EU-RO-1/b", "hf://ns/b"];

/// The upload modes the model runs in: close() waits for the upload, or returns once the
/// changes are journaled (the default; uploads, markers and deletes in the background).
const MODES: &[UploadMode] = &[UploadMode::OnClose, UploadMode::Background];

impl Core {
    fn new() -> Core {
        Core::for_source(SOURCES[0])
    }

    fn for_source(source: &str) -> Core {
        // The model checks the bucket right after close(): close waits for the upload.
        Core::with_upload_mode(source, UploadMode::OnClose)
    }

    fn with_upload_mode(source: &str, upload_mode: UploadMode) -> Core {
        let cache = tempfile::tempdir().expect("temp dir");
        let overrides = Overrides {
            max_put_size: Some(2 * BLOCK),
            part_size: Some(BLOCK),
            min_part_size: Some(1),
            ..Overrides::default()
        };
        let resolved = Resolved::new(&Source::parse(source).expect("source"), &overrides);
        let store = Arc::new(Gated::new(MemoryStore::new(), resolved.clone()));
        let config = FsConfig {
            metadata_ttl: Duration::ZERO,
            memory_limit: 64 * BLOCK,
            block_size: BLOCK,
            initial_prefetch: BLOCK,
            max_prefetch: 4 * BLOCK,
            cache_dir: cache.path().to_path_buf(),
            upload_mode,
            ..FsConfig::default()
        };
        let fs = Fs::new(store.clone(), resolved, config);
        Core {
            fs,
            store,
            upload_mode,
            _cache: cache,
        }
    }

    /// Waits until what the mount has done is in the bucket (uploads, markers, deletes
    /// sent in the background): then the bucket can be compared with the model, and
    /// another client sees it.
    async fn settle(&self) {
        if self.upload_mode == UploadMode::Background {
            self.fs.sync_all(Settle::Uploaded).await.expect("sync_all");
        }
    }

    /// The inode of `path`, looked up component by component as the kernel does.
    async fn walk(&self, path: &str) -> Result<(u64, Kind), Errno> {
        let mut at = (ROOT_INO, Kind::Dir);
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if at.1 != Kind::Dir {
                return Err(Errno(libc::ENOTDIR));
            }
            let attr = self.fs.lookup(at.0, part).await?;
            at = (attr.ino, attr.kind);
        }
        Ok(at)
    }

    async fn parent(&self, path: &str) -> Result<(u64, String), Errno> {
        let (dir, name) = split(path);
        match self.walk(dir).await? {
            (ino, Kind::Dir) => Ok((ino, name.to_string())),
            _ => Err(Errno(libc::ENOTDIR)),
        }
    }

    async fn write(&self, path: &str, offset: u64, data: &[u8], truncate: bool) -> Result<(), Errno> {
        let (parent, name) = self.parent(path).await?;
        let fh = match self.fs.lookup(parent, &name).await {
            Ok(attr) => {
                let mode = OpenMode {
                    write: true,
                    truncate,
                    append: false,
                };
                self.fs.open(attr.ino, mode).await?.fh
            }
            Err(Errno(libc::ENOENT)) => {
                let mode = OpenMode {
                    write: true,
                    ..OpenMode::default()
                };
                self.fs.create(parent, &name, 0o644, mode, CALLER).await?.1.fh
            }
            Err(e) => return Err(e),
        };
        let written = self.fs.write(fh, offset, data).await;
        let flushed = self.fs.flush(fh).await;
        self.fs.release(fh).await;
        assert_eq!(written?, data.len() as u32, "short write to {path}");
        flushed
    }

    async fn truncate(&self, path: &str, size: u64) -> Result<(), Errno> {
        let (ino, kind) = self.walk(path).await?;
        if kind == Kind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        let change = SetAttr {
            size: Some(size),
            ..SetAttr::default()
        };
        self.fs.setattr(ino, None, change).await.map(drop)
    }

    async fn read_all(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let fh = self.fs.open(ino, OpenMode::default()).await?.fh;
        let mut out = Vec::new();
        let result = loop {
            match self.fs.read(fh, out.len() as u64, 5000).await {
                Ok(chunk) if chunk.is_empty() => break Ok(out),
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(e) => break Err(e),
            }
        };
        self.fs.release(fh).await;
        result
    }

    async fn readdir(&self, ino: u64) -> Result<BTreeMap<String, Kind>, Errno> {
        let fh = self.fs.opendir(ino).await?;
        let mut entries = BTreeMap::new();
        let mut offset = 0;
        let result = loop {
            match self.fs.readdir(ino, fh, offset).await {
                Ok(page) if page.is_empty() => break Ok(entries),
                Ok(page) => {
                    for e in page {
                        offset = e.next_offset;
                        if e.name != "." && e.name != ".." {
                            let again = entries.insert(e.name.clone(), e.kind);
                            assert!(again.is_none(), "{:?} listed twice", e.name);
                        }
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.fs.releasedir(fh);
        result
    }

    /// The bucket's contents, looked at directly.
    fn bucket(&self) -> &MemoryStore {
        self.store.inner()
    }

    /// Another client's put (not bound by this mount's part and PutObject sizes).
    async fn remote_put(&self, key: &str, body: Vec<u8>) {
        self.bucket()
            .put(key, body.into(), &PutOptions::default())
            .await
            .expect("put");
    }
}

/// Applies `op` to the core and the model; the outcomes must agree.
async fn step(core: &Core, model: &mut Model, op: &Op) {
    let mut paths: Vec<String> = universe();
    paths.extend(model.paths());
    paths.sort();
    paths.dedup();
    let path = |p: &Pick| paths[p.0 % paths.len()].clone();
    let (want, got, what): (Result<(), i32>, Result<(), Errno>, String) = match op {
        Op::Write {
            path: p,
            offset,
            len,
            seed,
            truncate,
        } => {
            let path = path(p);
            let data = bytes(usize::from(*len), *seed);
            let offset = u64::from(*offset);
            let want = match (model.parent_error(&path), model.kind(&path)) {
                (Some(e), _) => Err(e),
                (None, Some(Kind::Dir)) => Err(libc::EISDIR),
                _ => Ok(()),
            };
            let got = core.write(&path, offset, &data, *truncate).await;
            if want.is_ok() && got.is_ok() {
                // A close uploads a new file or changed bytes; a file left as it was sends
                // nothing (README: "an O_TRUNC open of an empty file, a close without writes").
                let old = model.keys.get(&path);
                if old.is_none() || !data.is_empty() || (*truncate && old.is_some_and(|b| !b.is_empty())) {
                    model.written(&path);
                }
                let file = model.file_mut(&path);
                if *truncate {
                    file.clear();
                }
                // A write of no bytes changes nothing (POSIX), even past the end.
                if !data.is_empty() {
                    let end = offset as usize + data.len();
                    if file.len() < end {
                        file.resize(end, 0);
                    }
                    file[offset as usize..end].copy_from_slice(&data);
                }
            }
            (want, got, format!("write {path} at {offset}"))
        }
        Op::Truncate { path: p, size } => {
            let path = path(p);
            let want = model
                .lookup(&path)
                .and_then(|k| if k == Kind::Dir { Err(libc::EISDIR) } else { Ok(()) });
            let got = core.truncate(&path, u64::from(*size)).await;
            if want.is_ok() && got.is_ok() {
                let file = model.file_mut(&path);
                let changed = file.len() != usize::from(*size);
                file.resize(usize::from(*size), 0);
                if changed {
                    model.written(&path);
                }
            }
            (want, got, format!("truncate {path}"))
        }
        Op::Unlink { path: p } => {
            let path = path(p);
            let want = model
                .lookup(&path)
                .and_then(|k| if k == Kind::Dir { Err(libc::EISDIR) } else { Ok(()) });
            let got = match core.parent(&path).await {
                Ok((parent, name)) => core.fs.unlink(parent, &name).await,
                Err(e) => Err(e),
            };
            if want.is_ok() && got.is_ok() {
                model.keys.remove(&path);
            }
            (want, got, format!("unlink {path}"))
        }
        Op::Mkdir { path: p } => {
            let path = path(p);
            let want = match (model.parent_error(&path), model.kind(&path)) {
                (Some(e), _) => Err(e),
                (None, Some(_)) => Err(libc::EEXIST),
                (None, None) => Ok(()),
            };
            // The kernel answers EEXIST from its own lookup.
            let got = match core.parent(&path).await {
                Ok((parent, name)) => match core.fs.lookup(parent, &name).await {
                    Ok(_) => Err(Errno(libc::EEXIST)),
                    Err(Errno(libc::ENOENT)) => core.fs.mkdir(parent, &name, 0o755, CALLER).await.map(drop),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if want.is_ok() && got.is_ok() {
                if model.no_markers {
                    model.mount_only.insert(path.clone());
                } else {
                    model.keys.insert(format!("{path}/"), Vec::new());
                }
            }
            (want, got, format!("mkdir {path}"))
        }
        Op::Rmdir { path: p } => {
            let path = path(p);
            let want = match model.lookup(&path) {
                Err(e) => Err(e),
                Ok(Kind::Dir) if model.children(&path).is_empty() => Ok(()),
                Ok(Kind::Dir) => Err(libc::ENOTEMPTY),
                Ok(_) => Err(libc::ENOTDIR),
            };
            let got = match core.parent(&path).await {
                Ok((parent, name)) => core.fs.rmdir(parent, &name).await,
                Err(e) => Err(e),
            };
            if want.is_ok() && got.is_ok() {
                model.keys.remove(&format!("{path}/"));
                model.mount_only.remove(&path);
            }
            (want, got, format!("rmdir {path}"))
        }
        Op::Rename { from: f, to: t } => {
            let (from, to) = (path(f), path(t));
            let (want, kind) = rename_outcome(model, &from, &to);
            let got = if to.starts_with(&format!("{from}/")) || from == to {
                // The kernel refuses a move into the own subtree and skips a rename onto itself.
                want.map_err(Errno)
            } else {
                match (core.parent(&from).await, core.parent(&to).await) {
                    (Ok((p, n)), Ok((np, nn))) => core.fs.rename(p, &n, np, &nn, false).await,
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            };
            if want.is_ok() && got.is_ok() && from != to {
                if model.kind(&to) == Some(Kind::Dir) {
                    model.keys.remove(&format!("{to}/"));
                    model.mount_only.remove(&to);
                }
                model.rename(&from, &to, kind.expect("exists"));
            }
            (want, got, format!("rename {from} -> {to}"))
        }
        Op::RemotePut {
            path: p,
            len,
            seed,
            marker,
        } => {
            core.settle().await;
            let key = if *marker { format!("{}/", path(p)) } else { path(p) };
            let body = if *marker {
                Vec::new()
            } else {
                bytes(usize::from(*len), *seed)
            };
            if *marker && model.no_markers {
                // The provider refuses the name: another client cannot make a marker.
                let refused = core.store.put(&key, body.into(), &PutOptions::default()).await;
                assert!(
                    matches!(refused, Err(StoreError::InvalidName(_))),
                    "a marker put where markers are forbidden: {refused:?}"
                );
                return;
            }
            core.remote_put(&key, body.clone()).await;
            model.keys.insert(key, body);
            return;
        }
        Op::RemoteDelete { path: p, marker } => {
            core.settle().await;
            let key = if *marker { format!("{}/", path(p)) } else { path(p) };
            core.bucket().delete(&key).await.expect("delete");
            model.keys.remove(&key);
            return;
        }
    };
    assert_eq!(
        got.map_err(|e| e.0),
        want,
        "{what}: errno of the core (left) and the model (right)"
    );
}

/// What rename(2) of `from` to `to` gives, and the kind moved.
fn rename_outcome(model: &Model, from: &str, to: &str) -> (Result<(), i32>, Option<Kind>) {
    // The kernel walks to both parents before it looks the source up.
    if let Some(e) = model.parent_error(from).or_else(|| model.parent_error(to)) {
        return (Err(e), None);
    }
    let Some(kind) = model.kind(from) else {
        return (Err(libc::ENOENT), None);
    };
    if from == to {
        return (Ok(()), Some(kind));
    }
    if to.starts_with(&format!("{from}/")) {
        return (Err(libc::EINVAL), Some(kind));
    }
    let outcome = match (kind, model.kind(to)) {
        (_, None) => Ok(()),
        (Kind::Dir, Some(Kind::Dir)) if model.children(to).is_empty() => Ok(()),
        (Kind::Dir, Some(Kind::Dir)) => Err(libc::ENOTEMPTY),
        (Kind::Dir, Some(_)) => Err(libc::ENOTDIR),
        (_, Some(Kind::Dir)) => Err(libc::EISDIR),
        (_, Some(_)) => Ok(()),
    };
    (outcome, Some(kind))
}

/// Every path of up to two levels over `NAMES`.
fn universe() -> Vec<String> {
    let mut out = Vec::new();
    for a in NAMES {
        out.push(a.to_string());
        for b in NAMES {
            out.push(format!("{a}/{b}"));
        }
    }
    out
}

/// The core must show the model: names, kinds, sizes, bytes, directory entries, and the
/// bucket must hold exactly the model's keys. In the background upload mode the core is
/// looked at before and after its uploads, markers and deletes settle, the bucket after.
async fn check(core: &Core, model: &Model, after: &str) {
    if core.upload_mode == UploadMode::Background {
        check_view(core, model, &format!("{after}, before the uploads settled")).await;
        core.settle().await;
    }
    check_bucket(core, model, after);
    check_view(core, model, after).await;
}

/// The bucket must hold exactly the model's keys.
fn check_bucket(core: &Core, model: &Model, after: &str) {
    let bucket: BTreeMap<String, Vec<u8>> = core
        .bucket()
        .keys()
        .into_iter()
        .map(|k| {
            let body = core.bucket().contents(&k).expect("listed key").to_vec();
            (k, body)
        })
        .collect();
    assert!(
        bucket == model.keys,
        "after {after}: bucket {:?}\n model {:?}",
        summary(&bucket),
        summary(&model.keys)
    );
}

/// The core must show the model: names, kinds, sizes, bytes, directory entries.
async fn check_view(core: &Core, model: &Model, after: &str) {
    let mut paths = universe();
    paths.extend(model.paths());
    paths.push(String::new());
    for path in paths {
        let got = core.walk(&path).await;
        assert_eq!(
            got.map(|g| g.1).map_err(|e| e.0),
            model.lookup(&path),
            "after {after}: lookup {path:?}"
        );
        let Ok((ino, kind)) = got else { continue };
        if kind == Kind::Dir {
            let entries = core
                .readdir(ino)
                .await
                .unwrap_or_else(|e| panic!("after {after}: readdir {path:?}: {e:?}"));
            assert_eq!(entries, model.children(&path), "after {after}: entries of {path:?}");
            continue;
        }
        let attr = core
            .fs
            .getattr(ino)
            .await
            .unwrap_or_else(|e| panic!("after {after}: getattr {path:?}: {e:?}"));
        let want = &model.keys[&path];
        assert_eq!(attr.size, want.len() as u64, "after {after}: size of {path:?}");
        let body = core
            .read_all(ino)
            .await
            .unwrap_or_else(|e| panic!("after {after}: read {path:?}: {e:?}"));
        assert!(
            &body == want,
            "after {after}: {path:?} holds {} bytes, the model {}",
            body.len(),
            want.len()
        );
    }
}

fn summary(keys: &BTreeMap<String, Vec<u8>>) -> Vec<(String, usize)> {
    keys.iter().map(|(k, v)| (k.clone(), v.len())).collect()
}

/// Runs a test body on a fresh single-threaded runtime.
fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body)
}

fn run(ops: &[Op]) {
    for source in SOURCES {
        for mode in MODES {
            run_on(source, *mode, ops);
        }
    }
}

fn run_on(source: &str, mode: UploadMode, ops: &[Op]) {
    block_on(async {
        let core = Core::with_upload_mode(source, mode);
        let mut model = Model::new(source);
        for (i, op) in ops.iter().enumerate() {
            step(&core, &mut model, op).await;
            check(&core, &model, &format!("{source} ({mode:?}), step {i} {op:?}")).await;
        }
    });
}

proptest! {
    // Regressions in `core_model.proptest-regressions` beside this file (the default would
    // look for them under tests/proptest-regressions/, tests/it/ holding a main.rs).
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_core_matches_the_model_under_out_of_band_changes(
        source in prop::sample::select(SOURCES),
        mode in prop::sample::select(MODES),
        ops in prop::collection::vec(op_strategy(), 1..40),
    ) {
        let _turn = common::shared();
        run_on(source, mode, &ops);
    }
}

/// A few sequences that once mattered, run on every test run whatever the random seed.
#[test]
fn fixed_sequences() {
    let _turn = common::shared();
    let p = |i| Pick(i);
    // universe(): a a/a a/b a/c b b/a b/b b/c c c/a c/b c/c (sorted with model paths).
    run(&[
        Op::Mkdir { path: p(0) },
        Op::Write {
            path: p(1),
            offset: 0,
            len: 9000,
            seed: 1,
            truncate: false,
        },
        Op::RemotePut {
            path: p(0),
            len: 10,
            seed: 2,
            marker: false,
        },
        Op::Rename { from: p(0), to: p(4) },
        Op::Write {
            path: p(4),
            offset: 5000,
            len: 100,
            seed: 3,
            truncate: false,
        },
        Op::RemoteDelete {
            path: p(4),
            marker: true,
        },
        Op::Unlink { path: p(0) },
    ]);
}
