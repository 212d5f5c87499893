//! The bucket seen from the server's backend (no HTTP): waiting for background uploads and
//! deletes to land, and cleaning up.

use s3vol::server::RunningServer;
use std::time::{Duration, Instant};

/// How long background uploads or deletes may take before the benchmark gives up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Waits until the bucket holds `count` objects that are not directory markers.
pub fn wait_for_file_count(server: &RunningServer, bucket: &str, count: usize) {
    wait_for(server, bucket, |keys| {
        keys.iter().filter(|k| !k.ends_with('/')).count() >= count
    });
}

pub fn wait_for_empty_bucket(server: &RunningServer, bucket: &str) {
    wait_for(server, bucket, |keys| keys.is_empty());
}

/// Waits until the keys of the bucket satisfy `done`.
pub fn wait_for(server: &RunningServer, bucket: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let keys = server.backend().keys(bucket);
        if done(&keys) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{bucket}: still {} keys after {SETTLE_TIMEOUT:?}",
            keys.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn empty_bucket(server: &RunningServer, bucket: &str) {
    for key in server.backend().keys(bucket) {
        server.backend().delete_object(bucket, &key);
    }
}

pub fn expect_object_size(server: &RunningServer, bucket: &str, key: &str, size: u64) {
    let object = server.backend().get_object(bucket, key);
    let stored = object.map(|o| o.body.len());
    assert_eq!(stored, Some(size), "{bucket}/{key} was uploaded whole");
}
