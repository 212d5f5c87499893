//! Per-operation request counters, so tests can assert how many requests a client made
//! (e.g. that a cached directory listing did not hit `ListObjectsV2` again).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::lock;

/// Requests received, counted when they arrive (before quirks, auth or the backend
/// decide the answer), keyed by S3 operation name ("GetObject", "ListObjectsV2", ...).
/// Requests to the redirect listener count as "RedirectGet"; unclassified ones as "Other".
#[derive(Debug, Default)]
pub struct RequestStats {
    by_operation: Mutex<HashMap<&'static str, u64>>,
}

impl RequestStats {
    /// Requests received for `operation` since start or the last [`reset`](Self::reset).
    pub fn count(&self, operation: &str) -> u64 {
        lock(&self.by_operation).get(operation).copied().unwrap_or(0)
    }

    /// Requests received on both listeners.
    pub fn total(&self) -> u64 {
        lock(&self.by_operation).values().sum()
    }

    /// All non-zero counters, sorted by name (handy in assertion messages).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.by_operation)
            .iter()
            .map(|(name, count)| ((*name).to_owned(), *count))
            .collect()
    }

    pub fn reset(&self) {
        lock(&self.by_operation).clear();
    }

    pub(crate) fn record(&self, operation: &'static str) {
        *lock(&self.by_operation).entry(operation).or_default() += 1;
    }
}
