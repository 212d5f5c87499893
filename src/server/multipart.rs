//! Multipart uploads: create, upload part (and part copy), complete, abort, list.

use std::collections::BTreeMap;
use std::time::SystemTime;

use s3s::crypto::{Checksum, Md5};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput, CompleteMultipartUploadOutput,
    CopyPartResult, CreateMultipartUploadInput, CreateMultipartUploadOutput, ListMultipartUploadsInput,
    ListMultipartUploadsOutput, ListPartsInput, ListPartsOutput, MultipartUpload, Part, Range, UploadPartCopyInput,
    UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::backend::{MemoryBackend, StoredObject, StoredPart, Upload, no_such_bucket, to_hex};
use super::conditions::{OnUnchanged, Preconditions, check_write};
use super::objects::bucket_and_key;
use super::rope::Rope;
use super::s3_api::{collect_body, count_field, etag, size_field, user_metadata};

/// S3 part numbers run from 1 to 10000.
const MAX_PART_NUMBER: i32 = 10_000;

/// Default and maximum page size of ListParts and ListMultipartUploads.
const MAX_PAGE: usize = 1000;

pub(crate) fn create_multipart_upload(
    backend: &MemoryBackend,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let S3Request { input, extensions, .. } = req;
    let upload_id = format!("{:032x}", fastrand::u128(..));
    let upload = Upload {
        key: input.key.clone(),
        initiated: SystemTime::now(),
        content_type: input.content_type,
        metadata: user_metadata(input.metadata, &extensions),
        parts: BTreeMap::new(),
    };
    backend.with_bucket(&input.bucket, |bucket| {
        bucket.uploads.insert(upload_id.clone(), upload);
        Ok(())
    })?;
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        ..Default::default()
    }))
}

pub(crate) async fn upload_part(
    backend: &MemoryBackend,
    req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let S3Request { input, .. } = req;
    check_part_number(input.part_number)?;
    let part = StoredPart::new(collect_body(input.body).await?.into());
    let output = UploadPartOutput {
        e_tag: etag(&part.etag()),
        ..Default::default()
    };
    backend.with_bucket(&input.bucket, |bucket| {
        upload_of(&mut bucket.uploads, &input.upload_id, &input.key)?
            .parts
            .insert(input.part_number, part);
        Ok(())
    })?;
    Ok(S3Response::new(output))
}

pub(crate) fn upload_part_copy(
    backend: &MemoryBackend,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let input = &req.input;
    check_part_number(input.part_number)?;
    let (source_bucket, source_key) = bucket_and_key(&input.copy_source)?;
    let range = input
        .copy_source_range
        .as_deref()
        .map(Range::parse)
        .transpose()
        .map_err(|_| s3_error!(InvalidArgument, "invalid x-amz-copy-source-range"))?;
    let conditions = Preconditions {
        if_match: input.copy_source_if_match.as_ref(),
        if_none_match: input.copy_source_if_none_match.as_ref(),
        if_modified_since: input.copy_source_if_modified_since.as_ref(),
        if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
    };
    let body = backend.with_buckets(|buckets| -> S3Result<Rope> {
        let source = buckets
            .get(source_bucket)
            .ok_or_else(no_such_bucket)?
            .object(source_key)?;
        conditions.check(source, OnUnchanged::PreconditionFailed)?;
        let bucket = buckets.get(&input.bucket).ok_or_else(no_such_bucket)?;
        if bucket.uploads.get(&input.upload_id).is_none_or(|u| u.key != input.key) {
            return Err(s3_error!(NoSuchUpload));
        }
        match range {
            None => Ok(source.body.clone()),
            Some(range) => {
                let range = range
                    .check(source.size())
                    .map_err(|_| s3_error!(InvalidRange, "The x-amz-copy-source-range is not satisfiable"))?;
                Ok(source.body.slice(range.start..range.end))
            }
        }
    })?;
    // Hashed with the store unlocked, as UploadPart does: parts copied at once are
    // hashed at once, as a real service would.
    let part = StoredPart::new(body);
    backend.with_bucket(&input.bucket, |bucket| {
        upload_of(&mut bucket.uploads, &input.upload_id, &input.key)?
            .parts
            .insert(input.part_number, part.clone());
        Ok(())
    })?;
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: etag(&part.etag()),
            last_modified: Some(part.last_modified.into()),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

pub(crate) fn complete_multipart_upload(
    backend: &MemoryBackend,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let input = req.input;
    let requested = input
        .multipart_upload
        .and_then(|upload| upload.parts)
        .unwrap_or_default();
    if requested.is_empty() {
        return Err(s3_error!(MalformedXML, "You must specify at least one part"));
    }
    let min_part_size = backend.min_part_size();
    let object = backend.with_bucket(&input.bucket, |bucket| {
        let upload = upload_of(&mut bucket.uploads, &input.upload_id, &input.key)?;
        let mut parts = Vec::with_capacity(requested.len());
        let mut part_md5s = Vec::with_capacity(requested.len() * 16);
        let mut previous_number = 0;
        for (index, wanted) in requested.iter().enumerate() {
            let number = wanted.part_number.unwrap_or(0);
            if number <= previous_number {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order"
                ));
            }
            previous_number = number;
            let part = upload
                .parts
                .get(&number)
                .filter(|part| wanted.e_tag.as_ref().is_some_and(|etag| etag.value() == part.etag()))
                .ok_or_else(|| s3_error!(InvalidPart, "part {number} was not uploaded or its ETag does not match"))?;
            let is_last = index + 1 == requested.len();
            if !is_last && part.body.len() < min_part_size {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {number} is smaller than the minimum part size"
                ));
            }
            parts.push(&part.body);
            part_md5s.extend_from_slice(&part.md5);
        }
        // S3's multipart ETag: the MD5 of the concatenated binary part MD5s, then the part count.
        let etag = format!("{}-{}", to_hex(&Md5::checksum(&part_md5s)), requested.len());
        let object = StoredObject::with_etag(
            etag,
            Rope::concat(parts),
            upload.content_type.clone(),
            upload.metadata.clone(),
        );
        check_write(
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            bucket.objects.get(&input.key),
        )?;
        bucket.uploads.remove(&input.upload_id);
        bucket.objects.insert(input.key.clone(), object.clone());
        Ok(object)
    })?;
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        e_tag: etag(&object.etag),
        ..Default::default()
    }))
}

pub(crate) fn abort_multipart_upload(
    backend: &MemoryBackend,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let input = &req.input;
    backend.with_bucket(&input.bucket, |bucket| {
        upload_of(&mut bucket.uploads, &input.upload_id, &input.key)?;
        bucket.uploads.remove(&input.upload_id);
        Ok(())
    })?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

pub(crate) fn list_parts(
    backend: &MemoryBackend,
    req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let input = req.input;
    let after = input.part_number_marker.unwrap_or(0);
    let max_parts = page_size(input.max_parts);
    let mut parts = backend.with_bucket(&input.bucket, |bucket| {
        let upload = upload_of(&mut bucket.uploads, &input.upload_id, &input.key)?;
        Ok(upload
            .parts
            .range(after + 1..)
            .take(max_parts + 1)
            .map(|(number, part)| Part {
                part_number: Some(*number),
                e_tag: etag(&part.etag()),
                size: Some(size_field(part.body.len())),
                last_modified: Some(part.last_modified.into()),
                ..Default::default()
            })
            .collect::<Vec<_>>())
    })?;
    let is_truncated = parts.len() > max_parts;
    parts.truncate(max_parts);
    Ok(S3Response::new(ListPartsOutput {
        next_part_number_marker: parts.last().and_then(|part| part.part_number).filter(|_| is_truncated),
        is_truncated: Some(is_truncated),
        max_parts: Some(count_field(max_parts)),
        part_number_marker: input.part_number_marker,
        parts: Some(parts),
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        ..Default::default()
    }))
}

pub(crate) fn list_multipart_uploads(
    backend: &MemoryBackend,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let input = req.input;
    let prefix = input.prefix.as_deref().unwrap_or("");
    let max_uploads = page_size(input.max_uploads);
    let mut uploads = backend.with_bucket(&input.bucket, |bucket| {
        Ok(bucket
            .uploads
            .iter()
            .filter(|(_, upload)| upload.key.starts_with(prefix))
            .map(|(id, upload)| (upload.key.clone(), id.clone(), upload.initiated))
            .collect::<Vec<_>>())
    })?;
    uploads.sort();
    // Without an upload-id marker, the key marker excludes every upload of that key.
    let key_marker = input.key_marker.as_deref().unwrap_or("");
    let id_marker = input.upload_id_marker.as_deref().filter(|_| !key_marker.is_empty());
    uploads.retain(|(key, id, _)| match id_marker {
        Some(id_marker) => (key.as_str(), id.as_str()) > (key_marker, id_marker),
        None => key.as_str() > key_marker,
    });
    let is_truncated = uploads.len() > max_uploads;
    uploads.truncate(max_uploads);
    let (next_key_marker, next_upload_id_marker) = match uploads.last().filter(|_| is_truncated) {
        Some((key, id, _)) => (Some(key.clone()), Some(id.clone())),
        None => (None, None),
    };
    let uploads = uploads
        .into_iter()
        .map(|(key, id, initiated)| MultipartUpload {
            key: Some(key),
            upload_id: Some(id),
            initiated: Some(initiated.into()),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(input.bucket.clone()),
        prefix: input.prefix.clone(),
        key_marker: input.key_marker.clone(),
        upload_id_marker: input.upload_id_marker.clone(),
        max_uploads: Some(count_field(max_uploads)),
        is_truncated: Some(is_truncated),
        next_key_marker,
        next_upload_id_marker,
        uploads: Some(uploads),
        ..Default::default()
    }))
}

/// The upload `upload_id`, which must belong to `key`.
fn upload_of<'a>(
    uploads: &'a mut std::collections::HashMap<String, Upload>,
    upload_id: &str,
    key: &str,
) -> S3Result<&'a mut Upload> {
    uploads
        .get_mut(upload_id)
        .filter(|upload| upload.key == key)
        .ok_or_else(|| s3_error!(NoSuchUpload))
}

fn check_part_number(number: i32) -> S3Result<()> {
    if (1..=MAX_PART_NUMBER).contains(&number) {
        return Ok(());
    }
    Err(s3_error!(
        InvalidArgument,
        "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
    ))
}

fn page_size(requested: Option<i32>) -> usize {
    requested
        .and_then(|n| usize::try_from(n).ok())
        .map_or(MAX_PAGE, |n| n.min(MAX_PAGE))
}
