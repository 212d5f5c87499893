//! The s3s face of the backend: `impl S3` delegating each supported operation to
//! `buckets`, `objects` or `multipart`, plus the helpers they share. Operations not
//! listed keep s3s's default answer, 501 NotImplemented.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::Extensions;
use s3s::dto::*;
use s3s::stream::ByteStream;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use super::MAX_OBJECT_SIZE;
use super::backend::MemoryBackend;
use super::quirks::BackendDirectives;
use super::{buckets, multipart, objects};

pub(crate) struct S3Api {
    backend: Arc<MemoryBackend>,
}

impl S3Api {
    pub(crate) fn new(backend: Arc<MemoryBackend>) -> Self {
        Self { backend }
    }
}

type Answer<T> = S3Result<S3Response<T>>;

#[async_trait::async_trait]
impl S3 for S3Api {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> Answer<CreateBucketOutput> {
        buckets::create_bucket(&self.backend, req)
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> Answer<HeadBucketOutput> {
        buckets::head_bucket(&self.backend, req)
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> Answer<ListBucketsOutput> {
        buckets::list_buckets(&self.backend, req)
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> Answer<DeleteBucketOutput> {
        buckets::delete_bucket(&self.backend, req)
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> Answer<ListObjectsOutput> {
        buckets::list_objects(&self.backend, req)
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> Answer<ListObjectsV2Output> {
        buckets::list_objects_v2(&self.backend, req)
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> Answer<HeadObjectOutput> {
        objects::head_object(&self.backend, req)
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> Answer<GetObjectOutput> {
        objects::get_object(&self.backend, req)
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> Answer<PutObjectOutput> {
        objects::put_object(&self.backend, req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> Answer<CopyObjectOutput> {
        objects::copy_object(&self.backend, req)
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> Answer<DeleteObjectOutput> {
        objects::delete_object(&self.backend, req)
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> Answer<DeleteObjectsOutput> {
        objects::delete_objects(&self.backend, req)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> Answer<CreateMultipartUploadOutput> {
        multipart::create_multipart_upload(&self.backend, req)
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> Answer<UploadPartOutput> {
        multipart::upload_part(&self.backend, req).await
    }

    async fn upload_part_copy(&self, req: S3Request<UploadPartCopyInput>) -> Answer<UploadPartCopyOutput> {
        multipart::upload_part_copy(&self.backend, req)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> Answer<CompleteMultipartUploadOutput> {
        multipart::complete_multipart_upload(&self.backend, req)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> Answer<AbortMultipartUploadOutput> {
        multipart::abort_multipart_upload(&self.backend, req)
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> Answer<ListPartsOutput> {
        multipart::list_parts(&self.backend, req)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> Answer<ListMultipartUploadsOutput> {
        multipart::list_multipart_uploads(&self.backend, req)
    }
}

/// The most [`collect_body`] reserves up front.
const MAX_RESERVED: usize = 64 * 1024 * 1024;

/// Reads a request body into memory, refusing more than [`MAX_OBJECT_SIZE`] bytes
/// whatever the request declared.
pub(crate) async fn collect_body(body: Option<StreamingBlob>) -> S3Result<Bytes> {
    let Some(mut body) = body else {
        return Ok(Bytes::new());
    };
    // Reserve what the request announced (bounded, since it is only a claim): growing a
    // part-sized buffer by doubling copies it several times over.
    let announced = body.remaining_length().exact().unwrap_or(0);
    let mut collected = BytesMut::with_capacity(announced.min(MAX_RESERVED));
    while let Some(chunk) = body.next().await {
        // s3s reports failed aws-chunked signatures or checksums as S3 errors; keep them.
        let chunk = chunk.map_err(|error| match error.downcast::<S3Error>() {
            Ok(s3_error) => *s3_error,
            Err(other) => S3Error::with_source(S3ErrorCode::IncompleteBody, other),
        })?;
        if (collected.len() + chunk.len()) as u64 > MAX_OBJECT_SIZE {
            return Err(s3_error!(
                EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed object size."
            ));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected.freeze())
}

pub(crate) fn directives(extensions: &Extensions) -> BackendDirectives {
    extensions.get::<BackendDirectives>().copied().unwrap_or_default()
}

/// The user metadata to store for a write, honouring the drop-metadata quirk.
pub(crate) fn user_metadata(metadata: Option<Metadata>, extensions: &Extensions) -> BTreeMap<String, String> {
    if directives(extensions).drop_user_metadata {
        return BTreeMap::new();
    }
    metadata.unwrap_or_default().into_iter().collect()
}

pub(crate) fn to_metadata(metadata: &BTreeMap<String, String>) -> Option<Metadata> {
    (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect())
}

pub(crate) fn etag(value: &str) -> Option<ETag> {
    Some(ETag::Strong(value.to_owned()))
}

/// A byte count for an S3 `Size` / `ContentLength` field (saturating, never wrapping).
pub(crate) fn size_field(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// An entry count for an S3 `KeyCount` / `MaxKeys` field (saturating, never wrapping).
pub(crate) fn count_field(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}
