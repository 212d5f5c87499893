//! Object operations: HeadObject and GetObject (ranges, conditions), PutObject
//! (conditional writes), CopyObject, DeleteObject and DeleteObjects.

use s3s::dto::{
    CopyObjectInput, CopyObjectOutput, CopyObjectResult, CopySource, DeleteObjectInput, DeleteObjectOutput,
    DeleteObjectsInput, DeleteObjectsOutput, DeletedObject, GetObjectInput, GetObjectOutput, HeadObjectInput,
    HeadObjectOutput, MetadataDirective, PutObjectInput, PutObjectOutput, StreamingBlob,
};
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::backend::{MemoryBackend, StoredObject, no_such_bucket};
use super::conditions::{OnUnchanged, Preconditions, check_write};
use super::rope::Rope;
use super::s3_api::{collect_body, directives, etag, size_field, to_metadata, user_metadata};

/// DeleteObjects accepts at most this many keys per request, as on AWS.
const MAX_KEYS_PER_DELETE: usize = 1000;

pub(crate) fn head_object(
    backend: &MemoryBackend,
    req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let input = &req.input;
    let conditions = Preconditions {
        if_match: input.if_match.as_ref(),
        if_none_match: input.if_none_match.as_ref(),
        if_modified_since: input.if_modified_since.as_ref(),
        if_unmodified_since: input.if_unmodified_since.as_ref(),
    };
    let object = readable_object(backend, &input.bucket, &input.key, &conditions)?;
    Ok(S3Response::new(HeadObjectOutput {
        accept_ranges: Some("bytes".to_owned()),
        content_length: Some(size_field(object.size())),
        content_type: object.content_type.clone(),
        e_tag: etag(&object.etag),
        last_modified: Some(object.last_modified.into()),
        metadata: to_metadata(&object.metadata),
        ..Default::default()
    }))
}

pub(crate) fn get_object(
    backend: &MemoryBackend,
    req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let input = &req.input;
    if input.part_number.is_some() {
        return Err(s3_error!(NotImplemented, "GetObject by partNumber is not supported"));
    }
    let conditions = Preconditions {
        if_match: input.if_match.as_ref(),
        if_none_match: input.if_none_match.as_ref(),
        if_modified_since: input.if_modified_since.as_ref(),
        if_unmodified_since: input.if_unmodified_since.as_ref(),
    };
    let object = readable_object(backend, &input.bucket, &input.key, &conditions)?;
    let total = object.size();
    let (body, content_range) = match input.range {
        None => (object.body.clone(), None),
        Some(range) => {
            let range = range
                .check(total)
                .map_err(|_| s3_error!(InvalidRange, "The requested range is not satisfiable"))?;
            let slice = object.body.slice(range.start..range.end);
            (slice, Some(format!("bytes {}-{}/{total}", range.start, range.end - 1)))
        }
    };
    Ok(S3Response::new(GetObjectOutput {
        accept_ranges: Some("bytes".to_owned()),
        content_length: Some(size_field(body.len())),
        content_range,
        body: Some(StreamingBlob::new(body.into_body())),
        content_type: object.content_type.clone(),
        e_tag: etag(&object.etag),
        last_modified: Some(object.last_modified.into()),
        metadata: to_metadata(&object.metadata),
        ..Default::default()
    }))
}

fn readable_object(
    backend: &MemoryBackend,
    bucket: &str,
    key: &str,
    conditions: &Preconditions<'_>,
) -> S3Result<StoredObject> {
    backend.with_bucket(bucket, |bucket| {
        let object = bucket.object(key)?;
        conditions.check(object, OnUnchanged::NotModified)?;
        Ok(object.clone())
    })
}

pub(crate) async fn put_object(
    backend: &MemoryBackend,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let S3Request { input, extensions, .. } = req;
    let body = collect_body(input.body).await?;
    let object = StoredObject::new(
        body.into(),
        input.content_type,
        user_metadata(input.metadata, &extensions),
    );
    let output = PutObjectOutput {
        e_tag: etag(&object.etag),
        size: Some(size_field(object.size())),
        ..Default::default()
    };
    backend.with_bucket(&input.bucket, |bucket| {
        check_write(
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            bucket.objects.get(&input.key),
        )?;
        bucket.objects.insert(input.key, object);
        Ok(())
    })?;
    Ok(S3Response::new(output))
}

/// The bucket and key of a copy source (access point ARNs are not supported).
pub(crate) fn bucket_and_key(source: &CopySource) -> S3Result<(&str, &str)> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(NotImplemented, "only bucket/key copy sources are supported")),
    }
}

pub(crate) fn copy_object(
    backend: &MemoryBackend,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    let S3Request { input, extensions, .. } = req;
    let (source_bucket, source_key) = bucket_and_key(&input.copy_source)?;
    let replace = input
        .metadata_directive
        .as_ref()
        .is_some_and(|directive| directive.as_str() == MetadataDirective::REPLACE);
    if !replace && source_bucket == input.bucket && source_key == input.key {
        return Err(s3_error!(
            InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata."
        ));
    }
    let conditions = Preconditions {
        if_match: input.copy_source_if_match.as_ref(),
        if_none_match: input.copy_source_if_none_match.as_ref(),
        if_modified_since: input.copy_source_if_modified_since.as_ref(),
        if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
    };
    let (body, content_type, metadata) = backend.with_buckets(|buckets| -> S3Result<(Rope, _, _)> {
        let source = buckets
            .get(source_bucket)
            .ok_or_else(no_such_bucket)?
            .object(source_key)?;
        conditions.check(source, OnUnchanged::PreconditionFailed)?;
        buckets.get(&input.bucket).ok_or_else(no_such_bucket)?;
        let (content_type, metadata) = if replace {
            (input.content_type, user_metadata(input.metadata, &extensions))
        } else if directives(&extensions).drop_user_metadata {
            (source.content_type.clone(), Default::default())
        } else {
            (source.content_type.clone(), source.metadata.clone())
        };
        Ok((source.body.clone(), content_type, metadata))
    })?;
    // Hashed with the store unlocked: a copy of gigabytes must not stall every other
    // request, as it would on no real service.
    let copy = StoredObject::new(body, content_type, metadata);
    backend.with_bucket(&input.bucket, |destination| {
        destination.objects.insert(input.key, copy.clone());
        Ok(())
    })?;
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: etag(&copy.etag),
            last_modified: Some(copy.last_modified.into()),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

pub(crate) fn delete_object(
    backend: &MemoryBackend,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let input = &req.input;
    backend.with_bucket(&input.bucket, |bucket| {
        check_write(input.if_match.as_ref(), None, bucket.objects.get(&input.key))?;
        bucket.objects.remove(&input.key);
        Ok(())
    })?;
    Ok(S3Response::new(DeleteObjectOutput::default()))
}

pub(crate) fn delete_objects(
    backend: &MemoryBackend,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let S3Request { input, .. } = req;
    let targets = input.delete.objects;
    if targets.len() > MAX_KEYS_PER_DELETE {
        return Err(s3_error!(
            MalformedXML,
            "at most {MAX_KEYS_PER_DELETE} keys can be deleted per request"
        ));
    }
    backend.with_bucket(&input.bucket, |bucket| {
        for target in &targets {
            bucket.objects.remove(&target.key);
        }
        Ok(())
    })?;
    // Like S3, report missing keys as deleted too; quiet mode reports only errors.
    let quiet = input.delete.quiet.unwrap_or(false);
    let deleted = targets
        .into_iter()
        .filter(|_| !quiet)
        .map(|target| DeletedObject {
            key: Some(target.key),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(DeleteObjectsOutput {
        deleted: Some(deleted),
        ..Default::default()
    }))
}
