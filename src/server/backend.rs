//! In-memory object store with S3's flat key space: a bucket is one sorted map from the
//! full key to its object, so `a`, `a/b` and the empty directory marker `a/` coexist as
//! three independent keys, exactly as on a real S3 service.
//!
//! Besides serving s3s (see `s3_api`), it offers direct, synchronous access so tests
//! can set up data and change objects "out of band", without HTTP.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use s3s::{S3Error, S3Result, s3_error};

use super::lock;
use super::rope::Rope;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Kept as the pieces it was uploaded in (see [`Rope`]).
    pub body: Rope,
    /// Unquoted: MD5 hex of the body for simple uploads, `<md5 of part md5s>-<parts>`
    /// for multipart uploads.
    pub etag: String,
    pub last_modified: SystemTime,
    pub content_type: Option<String>,
    /// User metadata; keys without the `x-amz-meta-` prefix.
    pub metadata: BTreeMap<String, String>,
}

impl StoredObject {
    pub(crate) fn new(body: Rope, content_type: Option<String>, metadata: BTreeMap<String, String>) -> Self {
        Self::with_etag(to_hex(&body.md5()), body, content_type, metadata)
    }

    pub(crate) fn with_etag(
        etag: String,
        body: Rope,
        content_type: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        Self {
            body,
            etag,
            last_modified: SystemTime::now(),
            content_type,
            metadata,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.body.len()
    }
}

/// A part uploaded to a multipart upload.
#[derive(Debug, Clone)]
pub(crate) struct StoredPart {
    pub(crate) body: Rope,
    pub(crate) md5: [u8; 16],
    pub(crate) last_modified: SystemTime,
}

impl StoredPart {
    pub(crate) fn new(body: Rope) -> Self {
        Self {
            md5: body.md5(),
            body,
            last_modified: SystemTime::now(),
        }
    }

    pub(crate) fn etag(&self) -> String {
        to_hex(&self.md5)
    }
}

#[derive(Debug)]
pub(crate) struct Upload {
    pub(crate) key: String,
    pub(crate) initiated: SystemTime,
    pub(crate) content_type: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) parts: BTreeMap<i32, StoredPart>,
}

#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) created: SystemTime,
    pub(crate) objects: BTreeMap<String, StoredObject>,
    /// In-progress multipart uploads by upload id.
    pub(crate) uploads: HashMap<String, Upload>,
}

impl Bucket {
    pub(crate) fn object(&self, key: &str) -> S3Result<&StoredObject> {
        self.objects.get(key).ok_or_else(|| s3_error!(NoSuchKey))
    }
}

/// Errors of the direct (non-HTTP) API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    NoSuchBucket(String),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchBucket(bucket) => write!(f, "no such bucket: {bucket}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// The buckets and objects of one server.
#[derive(Debug)]
pub struct MemoryBackend {
    buckets: Mutex<BTreeMap<String, Bucket>>,
    /// Smallest size CompleteMultipartUpload accepts for every part but the last.
    min_part_size: u64,
}

impl MemoryBackend {
    pub(crate) fn new(min_part_size: u64) -> Self {
        Self {
            buckets: Mutex::default(),
            min_part_size,
        }
    }

    /// Creates `bucket`; false if it already existed.
    pub fn create_bucket(&self, bucket: &str) -> bool {
        let mut buckets = lock(&self.buckets);
        if buckets.contains_key(bucket) {
            return false;
        }
        let created = SystemTime::now();
        buckets.insert(
            bucket.to_owned(),
            Bucket {
                created,
                objects: BTreeMap::new(),
                uploads: HashMap::new(),
            },
        );
        true
    }

    /// Stores an object as a simple PutObject would (no Content-Type) and returns its
    /// unquoted ETag. `metadata` keys go without the `x-amz-meta-` prefix.
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: impl Into<bytes::Bytes>,
        metadata: &[(&str, &str)],
    ) -> Result<String, BackendError> {
        let metadata = metadata
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let object = StoredObject::new(Rope::from(body.into()), None, metadata);
        let etag = object.etag.clone();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets
            .get_mut(bucket)
            .ok_or_else(|| BackendError::NoSuchBucket(bucket.to_owned()))?;
        bucket.objects.insert(key.to_owned(), object);
        Ok(etag)
    }

    pub fn get_object(&self, bucket: &str, key: &str) -> Option<StoredObject> {
        lock(&self.buckets).get(bucket)?.objects.get(key).cloned()
    }

    /// Removes an object; false if there was none.
    pub fn delete_object(&self, bucket: &str, key: &str) -> bool {
        lock(&self.buckets)
            .get_mut(bucket)
            .is_some_and(|bucket| bucket.objects.remove(key).is_some())
    }

    /// All keys of `bucket` in S3 order (empty if the bucket does not exist).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        lock(&self.buckets)
            .get(bucket)
            .map(|bucket| bucket.objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Keys of the multipart uploads of `bucket` neither completed nor aborted, sorted.
    pub fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        let buckets = lock(&self.buckets);
        let mut keys: Vec<String> = buckets
            .get(bucket)
            .map(|bucket| bucket.uploads.values().map(|upload| upload.key.clone()).collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    pub(crate) fn min_part_size(&self) -> u64 {
        self.min_part_size
    }

    /// Runs `f` on `bucket` under the store lock; `NoSuchBucket` if it does not exist.
    pub(crate) fn with_bucket<T>(&self, bucket: &str, f: impl FnOnce(&mut Bucket) -> S3Result<T>) -> S3Result<T> {
        f(lock(&self.buckets).get_mut(bucket).ok_or_else(no_such_bucket)?)
    }

    /// Runs `f` on all buckets under the store lock (bucket-level and cross-bucket operations).
    pub(crate) fn with_buckets<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Bucket>) -> T) -> T {
        f(&mut lock(&self.buckets))
    }
}

pub(crate) fn no_such_bucket() -> S3Error {
    s3_error!(NoSuchBucket)
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
