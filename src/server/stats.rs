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
    /// Per operation: requests being answered now, and the most there were at once.
    in_flight: Mutex<HashMap<&'static str, (u64, u64)>>,
    /// Bytes of object data sent in GetObject answers (their Content-Length).
    object_bytes_sent: std::sync::atomic::AtomicU64,
    /// Requests whose body was not signed (`x-amz-content-sha256: UNSIGNED-PAYLOAD`).
    unsigned_payloads: std::sync::atomic::AtomicU64,
}

/// A request being answered; counted in flight until dropped.
pub(crate) struct InFlight<'a> {
    stats: &'a RequestStats,
    operation: &'static str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some((now, _)) = lock(&self.stats.in_flight).get_mut(self.operation) {
            *now = now.saturating_sub(1);
        }
    }
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

    /// The most requests for `operation` the server was answering at once (waiting out an
    /// injected latency included) since start or the last reset.
    pub fn peak_in_flight(&self, operation: &str) -> u64 {
        lock(&self.in_flight).get(operation).map_or(0, |(_, peak)| *peak)
    }

    /// Bytes of object data sent in GetObject answers since start or the last reset.
    pub fn object_bytes_sent(&self) -> u64 {
        self.object_bytes_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests with an unsigned body since start or the last reset.
    pub fn unsigned_payloads(&self) -> u64 {
        self.unsigned_payloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_unsigned_payload(&self) {
        self.unsigned_payloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn count_object_bytes(&self, bytes: u64) {
        self.object_bytes_sent
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn reset(&self) {
        self.object_bytes_sent.store(0, std::sync::atomic::Ordering::Relaxed);
        self.unsigned_payloads.store(0, std::sync::atomic::Ordering::Relaxed);
        lock(&self.by_operation).clear();
        for (_, peak) in lock(&self.in_flight).values_mut() {
            *peak = 0;
        }
    }

    /// Counts a request, and holds it in flight until the guard is dropped.
    pub(crate) fn record(&self, operation: &'static str) -> InFlight<'_> {
        *lock(&self.by_operation).entry(operation).or_default() += 1;
        let mut in_flight = lock(&self.in_flight);
        let (now, peak) = in_flight.entry(operation).or_default();
        *now += 1;
        *peak = (*peak).max(*now);
        InFlight { stats: self, operation }
    }
}
