//! The object-store boundary: everything the filesystem needs from S3, and nothing of HTTP.

mod body;
mod ca_bundle;
mod error;
pub mod gate;
mod h1_conn;
mod h1_get;
mod http_get;
pub mod memory;
pub mod pagination;
mod redirect;
mod retry;
pub mod s3;

pub use body::Body;
pub use ca_bundle::CaBundle;
pub use error::{StoreError, StoreResult};
pub use gate::Gated;
pub use retry::RetryPolicy;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

/// `x-amz-meta-*` pairs, names without the prefix, lower case.
pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// Filled by `head` (and a GET's `described`) only: listings carry no user metadata.
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub continuation: Option<String>,
    pub start_after: Option<String>,
    /// At most 1000 on every provider.
    pub max_keys: Option<i32>,
}

#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes, each ending with the delimiter.
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

/// A GET's body as a stream of chunks.
pub type BodyStream = BoxStream<'static, StoreResult<Bytes>>;

pub struct GetResponse {
    /// The object's ETag as the server reported it for this response.
    pub etag: Option<String>,
    /// Total size of the object (not of the range).
    pub object_size: u64,
    /// The object as this response's headers describe it, user metadata included, as a
    /// HEAD would: `None` where they do not (a redirect's CDN answer, an empty range).
    pub described: Option<ObjectMeta>,
    pub body: Body,
}

impl GetResponse {
    /// Reads the whole body into one buffer (callers bound the range they ask for).
    pub async fn collect(mut self) -> StoreResult<Bytes> {
        if let Some(len) = self.body.expected_len() {
            // Read in place: no chunk buffers to join.
            let mut all = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
            let mut at = 0;
            while at < all.len() {
                match self.body.read_into(&mut all[at..]).await? {
                    0 => break,
                    n => at += n,
                }
            }
            all.truncate(at);
            return Ok(Bytes::from(all));
        }
        let mut chunks = Vec::new();
        while let Some(chunk) = self.body.next().await {
            chunks.push(chunk?);
        }
        Ok(match chunks.len() {
            1 => chunks.pop().unwrap_or_default(),
            _ => Bytes::from(chunks.concat()),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub metadata: Metadata,
    /// Fail with PreconditionFailed if the key exists (`If-None-Match: *`).
    pub if_none_match: bool,
    /// Fail with PreconditionFailed if the object's ETag is another (`If-Match`); a missing
    /// object fails with NotFound or PreconditionFailed, as the provider answers.
    pub if_match: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub number: i32,
    pub etag: String,
}

/// Request counters of a store, for `s3vol status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
}

/// Abstract object storage; implemented over S3 (`s3.rs`) and in memory (`memory.rs`).
/// Keys are full keys in the bucket (the mount's prefix is the caller's business).
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta>;

    /// GET of `range` (clamped to the object's end). With `if_match`, an object whose ETag
    /// differs fails with `PreconditionFailed`, whether or not the server honours If-Match.
    async fn get_range(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> StoreResult<GetResponse>;

    async fn list_page(&self, req: &ListRequest) -> StoreResult<ListPage>;

    /// Returns the new ETag.
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<String>;

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String>;

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, body: Bytes) -> StoreResult<CompletedPart>;

    /// Server-side copy of `range` of `source` into a part; `Unsupported` where the
    /// provider has no UploadPartCopy. With `source_etag`, a source that changed fails
    /// with `PreconditionFailed` instead of copying the new version's bytes.
    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        source_etag: Option<&str>,
        range: Range<u64>,
    ) -> StoreResult<CompletedPart>;

    /// Returns the new ETag. With `if_match`, as `PutOptions::if_match`.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
    ) -> StoreResult<String>;

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;

    /// Server-side copy. `metadata: Some` replaces the metadata (copy onto itself to change
    /// metadata only); `None` keeps the source's.
    async fn copy(&self, source: &str, dest: &str, metadata: Option<&Metadata>) -> StoreResult<String>;

    /// Deleting a missing key succeeds, as in S3.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Deletes many keys: one DeleteObjects call per 1000 keys where the provider offers it,
    /// else one request per key (concurrently, bounded).
    async fn delete_many(&self, keys: &[String]) -> StoreResult<()>;

    /// Atomic rename; `Unsupported` where the provider has no RenameObject.
    async fn rename(&self, source: &str, dest: &str) -> StoreResult<()>;

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}
