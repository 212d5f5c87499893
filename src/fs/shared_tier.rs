//! The shared cache tier: blocks kept in an S3-compatible bucket near the machines
//! (`--shared-cache`), which every mount of the same source reads before the origin and
//! fills behind it. The read path is memory, local disk, this tier, the origin.
//!
//! Correct by construction: a block's key is a hash of the origin (endpoint and bucket),
//! the object's key, ETag and size, the block size and the block's index, so a replaced
//! object is never served from the tier; each stored block carries that identity's hash,
//! its length and a CRC32 of its data, all checked before it is used (a block that fails
//! is a miss, and is written again from the origin). The tier never decides an error: a
//! tier that is slow or down is skipped (short timeouts, then a pause before it is tried
//! again), a tier that refuses writes is only read, and writes go in the background: a
//! few at once, the others queued up to a byte budget, beyond which a block is not shared
//! (a later mount that misses it fetches it from the origin and shares it then).

use super::blocks::ObjectVersion;
use crate::store::{ObjectStore, PutOptions, StoreError};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore};

const MAGIC: &[u8; 8] = b"S3VTIER1";
/// Magic, data length, identity hash (SHA-256), data CRC32, reserved.
const HEADER: usize = 8 + 8 + 32 + 4 + 4;
/// Background writes to the tier at once; more wait in the queue (`TierConfig::queue_bytes`).
const WRITES_IN_FLIGHT: usize = 8;
/// How long the tier is left alone after it failed or was too slow.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Objects whose origin check (`confirm_origin`) is remembered.
const CONFIRMED_MAX: usize = 4096;

/// What the tier did, for `s3vol status` and the metrics.
#[derive(Debug, Default)]
pub struct TierStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Blocks found but not valid (wrong identity, length or checksum): served from the origin.
    pub rejected: AtomicU64,
    /// Requests that failed or timed out (the tier was then paused).
    pub errors: AtomicU64,
    pub writes: AtomicU64,
    /// Blocks not written because the write queue was full.
    pub writes_dropped: AtomicU64,
    pub bytes_read: AtomicU64,
}

/// Where the tier is and how to use it.
pub struct TierConfig {
    /// The tier's bucket.
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix of this source's blocks in the tier bucket (ends with `/`).
    pub prefix: String,
    /// The origin's endpoint and bucket, part of every block's identity.
    pub origin: String,
    /// Longest wait for one block from the tier.
    pub timeout: Duration,
    /// Never write to the tier.
    pub read_only: bool,
    /// Bytes of blocks waiting for or under way to the tier at most (they share the
    /// buffers the memory cache holds, but outlive their eviction).
    pub queue_bytes: u64,
    /// HEAD the object at the origin before serving shared blocks of it: only a mount
    /// that may read the object gets its bytes from the tier.
    pub confirm_origin: Option<Arc<dyn ObjectStore>>,
}

/// The answer of one origin check, shared by the reads that wait for it.
type OriginCheck = Arc<OnceCell<bool>>;
/// An object version: key and ETag.
type VersionKey = (Arc<str>, Arc<str>);

pub struct SharedTier {
    config: TierConfig,
    writes: Arc<Semaphore>,
    queued_bytes: AtomicU64,
    /// Set when the tier refused a write: this mount only reads it from then on.
    refused_writes: AtomicBool,
    paused_until: Mutex<Option<Instant>>,
    /// Per object version (key, ETag): whether the origin showed it to this mount.
    confirmed: Mutex<HashMap<VersionKey, OriginCheck>>,
    pub stats: TierStats,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("prefix", &self.config.prefix)
            .finish()
    }
}

impl SharedTier {
    pub fn new(config: TierConfig) -> Arc<SharedTier> {
        let refused = config.read_only;
        Arc::new(SharedTier {
            config,
            writes: Arc::new(Semaphore::new(WRITES_IN_FLIGHT)),
            queued_bytes: AtomicU64::new(0),
            refused_writes: AtomicBool::new(refused),
            paused_until: Mutex::new(None),
            confirmed: Mutex::new(HashMap::new()),
            stats: TierStats::default(),
        })
    }

    /// False while the tier is paused after a failure.
    pub fn usable(&self) -> bool {
        let mut paused = self.paused_until.lock();
        match *paused {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *paused = None;
                true
            }
            None => true,
        }
    }

    fn pause(&self, what: &str, why: &str) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let mut paused = self.paused_until.lock();
        if paused.is_none() {
            tracing::warn!(
                "shared cache {}: {what} failed ({why}); reading from the origin for {} s",
                self.config.prefix,
                PAUSE_AFTER_FAILURE.as_secs()
            );
        }
        *paused = Some(Instant::now() + PAUSE_AFTER_FAILURE);
    }

    fn identity(&self, object: &ObjectVersion, block_size: u64, index: u64) -> [u8; 32] {
        use sha2::Digest;
        let text = format!(
            "{}\n{}\n{}\n{}\n{block_size}\n{index}",
            self.config.origin, object.key, object.etag, object.size
        );
        sha2::Sha256::digest(text.as_bytes()).into()
    }

    fn key(&self, identity: &[u8; 32]) -> String {
        let mut key = self.config.prefix.clone();
        for b in identity {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }

    /// The block from the tier, checked; `None` if absent, invalid, or the tier is paused,
    /// slow or failing. `len` is the block's length in the object.
    pub async fn get(&self, object: &ObjectVersion, block_size: u64, index: u64, len: u64) -> Option<Bytes> {
        if !self.usable() || !self.origin_confirms(object).await {
            return None;
        }
        let identity = self.identity(object, block_size, index);
        let key = self.key(&identity);
        let fetch = async {
            let response = self.config.store.get_range(&key, 0..HEADER as u64 + len, None).await?;
            response.collect().await
        };
        let body = match tokio::time::timeout(self.config.timeout, fetch).await {
            Ok(Ok(body)) => body,
            Ok(Err(StoreError::NotFound)) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            // The tier itself fails (down, overloaded, refusing us): leave it alone a while.
            Ok(Err(e)) if e.is_transient() || e.may_be_stale_credentials() => {
                self.pause("a read", &e.to_string());
                return None;
            }
            // Something about this one key: a miss like a bad block.
            Ok(Err(e)) => {
                tracing::debug!("shared cache: block {key}: {e}; ignored");
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(_) => {
                self.pause("a read", "timed out");
                return None;
            }
        };
        match decode(&body, &identity, len) {
            Some(data) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_read.fetch_add(len, Ordering::Relaxed);
                Some(data)
            }
            None => {
                tracing::debug!("shared cache: block {key} is not valid for {:?}; ignored", object.key);
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether shared blocks of `object` may be served: always, unless the mount confirms
    /// with the origin (once per object version) that it can read the object.
    async fn origin_confirms(&self, object: &ObjectVersion) -> bool {
        let Some(origin) = &self.config.confirm_origin else {
            return true;
        };
        let cell = {
            let mut confirmed = self.confirmed.lock();
            if confirmed.len() >= CONFIRMED_MAX {
                confirmed.clear();
            }
            confirmed
                .entry((object.key.clone(), object.etag.clone()))
                .or_default()
                .clone()
        };
        // A definite answer is kept; a transient failure is asked again next time.
        let answer = cell
            .get_or_try_init(|| async {
                match origin.head(&object.key).await {
                    Ok(meta) => Ok(meta.etag.as_deref() == Some(&*object.etag)),
                    Err(e) if e.is_transient() => Err(e),
                    Err(e) => {
                        tracing::debug!("shared cache: origin check of {:?}: {e}", object.key);
                        Ok(false)
                    }
                }
            })
            .await;
        answer.copied().unwrap_or(false)
    }

    /// Writes a block fetched from the origin to the tier in the background, unless the
    /// tier is read-only or paused, or its write queue is full.
    pub fn put_later(self: &Arc<Self>, object: &ObjectVersion, block_size: u64, index: u64, data: Bytes) {
        if self.refused_writes.load(Ordering::Relaxed) || !self.usable() {
            return;
        }
        let len = data.len() as u64;
        let limit = self.config.queue_bytes;
        let queued = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + len <= limit).then_some(q + len)
            });
        if queued.is_err() {
            self.stats.writes_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let identity = self.identity(object, block_size, index);
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(_permit) = this.writes.acquire().await {
                this.write(&identity, &data).await;
            }
            this.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        });
    }

    /// Waits, at most `bound`, for the queued writes to go out (at unmount: the blocks the
    /// last reads fetched are shared too); false if some were still waiting.
    pub async fn settle(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.queued_bytes.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// One block to the tier (skipped if the tier was paused or refused writes while the
    /// block waited in the queue).
    async fn write(&self, identity: &[u8; 32], data: &Bytes) {
        if self.refused_writes.load(Ordering::Relaxed) || !self.usable() {
            return;
        }
        let key = self.key(identity);
        let body = encode(identity, data);
        let options = PutOptions::default();
        let put = self.config.store.put(&key, body, &options);
        match tokio::time::timeout(self.config.timeout * 4, put).await {
            Ok(Ok(_)) => {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) if e.may_be_stale_credentials() || matches!(e, StoreError::NoSpace(_)) => {
                if !self.refused_writes.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "shared cache {}: writes refused ({e}); this mount only reads it",
                        self.config.prefix
                    );
                }
            }
            Ok(Err(e)) => self.pause("a write", &e.to_string()),
            Err(_) => self.pause("a write", "timed out"),
        }
    }
}

/// A block as stored in the tier: header, then the data.
fn encode(identity: &[u8; 32], data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + data.len());
    out.put_slice(MAGIC);
    out.put_u64_le(data.len() as u64);
    out.put_slice(identity);
    out.put_u32_le(crc32fast::hash(data));
    out.put_u32_le(0);
    out.put_slice(data);
    out.freeze()
}

/// The data of a stored block, if it is the block `identity` names, `len` bytes long,
/// and intact.
fn decode(stored: &Bytes, identity: &[u8; 32], len: u64) -> Option<Bytes> {
    let header = stored.get(..HEADER)?;
    let data = stored.slice(HEADER..);
    let stored_len = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let crc = u32::from_le_bytes(header[48..52].try_into().ok()?);
    let valid = &header[..8] == MAGIC
        && stored_len == len
        && data.len() as u64 == len
        && &header[16..48] == identity
        && crc32fast::hash(&data) == crc;
    valid.then_some(data)
}

#[cfg(test)]
mod tests;
