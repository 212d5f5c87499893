//! A panic in one request must not take the mount down: the core's shared state stays
//! usable by every later request (its locks do not stay poisoned).

use super::{Caller, Fs, FsConfig, OpenMode, ROOT_INO};
use crate::provider::{Overrides, Resolved};
use crate::source::Source;
use crate::store::memory::MemoryStore;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

fn core(cache: &std::path::Path) -> Arc<Fs> {
    let resolved = Resolved::new(&Source::parse("s3://b").expect("source"), &Overrides::default());
    let config = FsConfig {
        cache_dir: cache.to_path_buf(),
        ..FsConfig::default()
    };
    Fs::new(Arc::new(MemoryStore::new()), resolved, config)
}

/// Panics while holding `lock`, as a request handler hitting a bug would.
pub(super) fn panic_holding<T>(lock: &parking_lot::Mutex<T>) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _held = lock.lock();
        panic!("a bug in a request handler");
    }));
    assert!(result.is_err());
}

#[tokio::test]
async fn the_mount_keeps_serving_after_a_handler_panicked_holding_its_locks() {
    let cache = tempfile::tempdir().expect("temp dir");
    let fs = core(cache.path());
    let caller = Caller { uid: 0, gid: 0 };
    panic_holding(&fs.tree);
    fs.handles.panic_holding_each_lock();
    fs.deferred.panic_holding_each_lock();
    let (attr, opened) = fs
        .create(ROOT_INO, "after-panic", 0o644, OpenMode::default(), caller)
        .await
        .expect("create after a panic");
    assert_eq!(fs.write(opened.fh, 0, b"still here").await, Ok(10));
    fs.flush(opened.fh).await.expect("flush");
    fs.release(opened.fh).await;
    assert_eq!(fs.lookup(ROOT_INO, "after-panic").await.map(|a| a.size), Ok(10));
    assert_eq!(fs.getattr(attr.ino).await.map(|a| a.size), Ok(10));
}
