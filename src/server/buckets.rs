//! Bucket operations: create, head, list buckets, delete, and both object listings.

use s3s::dto::{
    Bucket, CommonPrefix, CreateBucketInput, CreateBucketOutput, DeleteBucketInput, DeleteBucketOutput, EncodingType,
    HeadBucketInput, HeadBucketOutput, ListBucketsInput, ListBucketsOutput, ListObjectsInput, ListObjectsOutput,
    ListObjectsV2Input, ListObjectsV2Output, Object,
};
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::backend::{MemoryBackend, StoredObject, no_such_bucket, to_hex};
use super::listing::{self, Entry, ListPage, ListQuery};
use super::percent::encode_key;
use super::s3_api::{count_field, directives, etag, size_field};

/// S3 never returns more than 1000 keys per listing page.
const MAX_KEYS_PER_PAGE: usize = 1000;

pub(crate) fn create_bucket(
    backend: &MemoryBackend,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    if !backend.create_bucket(&req.input.bucket) {
        return Err(s3_error!(BucketAlreadyOwnedByYou));
    }
    Ok(S3Response::new(CreateBucketOutput::default()))
}

pub(crate) fn head_bucket(
    backend: &MemoryBackend,
    req: S3Request<HeadBucketInput>,
) -> S3Result<S3Response<HeadBucketOutput>> {
    backend.with_bucket(&req.input.bucket, |_| Ok(()))?;
    Ok(S3Response::new(HeadBucketOutput::default()))
}

pub(crate) fn list_buckets(
    backend: &MemoryBackend,
    _req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    let buckets = backend.with_buckets(|buckets| {
        buckets
            .iter()
            .map(|(name, bucket)| Bucket {
                name: Some(name.clone()),
                creation_date: Some(bucket.created.into()),
                ..Default::default()
            })
            .collect()
    });
    Ok(S3Response::new(ListBucketsOutput {
        buckets: Some(buckets),
        ..Default::default()
    }))
}

pub(crate) fn delete_bucket(
    backend: &MemoryBackend,
    req: S3Request<DeleteBucketInput>,
) -> S3Result<S3Response<DeleteBucketOutput>> {
    backend.with_buckets(|buckets| {
        let bucket = buckets.get(&req.input.bucket).ok_or_else(no_such_bucket)?;
        if !bucket.objects.is_empty() {
            return Err(s3_error!(BucketNotEmpty));
        }
        buckets.remove(&req.input.bucket);
        Ok(())
    })?;
    Ok(S3Response::new(DeleteBucketOutput::default()))
}

pub(crate) fn list_objects_v2(
    backend: &MemoryBackend,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let S3Request { input, extensions, .. } = req;
    let resume_after = input.continuation_token.as_deref().map(decode_token).transpose()?;
    // Emulated Runpod quirk: an empty page that hands the same token back.
    let echo_token = directives(&extensions).echo_continuation_token && input.continuation_token.is_some();
    let query = ListQuery {
        prefix: input.prefix.as_deref().unwrap_or(""),
        delimiter: input.delimiter.as_deref(),
        after: resume_after.as_deref().or(input.start_after.as_deref()),
        max_keys: max_keys(input.max_keys)?,
    };
    let names = Names::new(input.encoding_type.as_ref());
    let page = backend.with_bucket(&input.bucket, |bucket| {
        Ok(if echo_token {
            Page::default()
        } else {
            Page::render(listing::list(&bucket.objects, &query), &names)
        })
    })?;
    let next_continuation_token = if echo_token {
        input.continuation_token.clone()
    } else {
        page.resume_after.as_deref().map(|name| to_hex(name.as_bytes()))
    };
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: Some(names.encode(query.prefix)),
        delimiter: query.delimiter.map(|delimiter| names.encode(delimiter)),
        max_keys: Some(count_field(query.max_keys)),
        key_count: Some(count_field(page.contents.len() + page.common_prefixes.len())),
        is_truncated: Some(next_continuation_token.is_some()),
        next_continuation_token,
        continuation_token: input.continuation_token,
        start_after: input.start_after.as_deref().map(|start| names.encode(start)),
        encoding_type: input.encoding_type,
        contents: Some(page.contents),
        common_prefixes: Some(page.common_prefixes),
        ..Default::default()
    }))
}

pub(crate) fn list_objects(
    backend: &MemoryBackend,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let input = req.input;
    let query = ListQuery {
        prefix: input.prefix.as_deref().unwrap_or(""),
        delimiter: input.delimiter.as_deref(),
        after: input.marker.as_deref(),
        max_keys: max_keys(input.max_keys)?,
    };
    let names = Names::new(input.encoding_type.as_ref());
    let page = backend.with_bucket(&input.bucket, |bucket| {
        Ok(Page::render(listing::list(&bucket.objects, &query), &names))
    })?;
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(input.bucket.clone()),
        prefix: Some(names.encode(query.prefix)),
        delimiter: query.delimiter.map(|delimiter| names.encode(delimiter)),
        marker: Some(
            input
                .marker
                .as_deref()
                .map(|marker| names.encode(marker))
                .unwrap_or_default(),
        ),
        max_keys: Some(count_field(query.max_keys)),
        is_truncated: Some(page.resume_after.is_some()),
        next_marker: page.resume_after.as_deref().map(|name| names.encode(name)),
        encoding_type: input.encoding_type.clone(),
        contents: Some(page.contents),
        common_prefixes: Some(page.common_prefixes),
        ..Default::default()
    }))
}

fn max_keys(requested: Option<i32>) -> S3Result<usize> {
    match requested {
        None => Ok(MAX_KEYS_PER_PAGE),
        Some(n) => usize::try_from(n)
            .map(|n| n.min(MAX_KEYS_PER_PAGE))
            .map_err(|_| s3_error!(InvalidArgument, "max-keys must not be negative")),
    }
}

/// Continuation tokens are the hex of the name the next page resumes after: opaque to
/// clients, safe in URLs, and stateless for the server.
fn decode_token(token: &str) -> S3Result<String> {
    let invalid = || s3_error!(InvalidArgument, "The continuation token provided is incorrect");
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&token[at..at + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

/// Names as the response must show them: percent-encoded with `encoding-type=url`.
struct Names {
    url_encoded: bool,
}

impl Names {
    fn new(encoding: Option<&EncodingType>) -> Self {
        Self {
            url_encoded: encoding.is_some_and(|encoding| encoding.as_str() == EncodingType::URL),
        }
    }

    fn encode(&self, name: &str) -> String {
        if self.url_encoded {
            encode_key(name)
        } else {
            name.to_owned()
        }
    }
}

#[derive(Default)]
struct Page {
    contents: Vec<Object>,
    common_prefixes: Vec<CommonPrefix>,
    resume_after: Option<String>,
}

impl Page {
    fn render(page: ListPage<'_, StoredObject>, names: &Names) -> Self {
        let mut rendered = Self {
            resume_after: page.resume_after,
            ..Self::default()
        };
        for entry in page.entries {
            match entry {
                Entry::Object(key, object) => rendered.contents.push(Object {
                    key: Some(names.encode(key)),
                    e_tag: etag(&object.etag),
                    last_modified: Some(object.last_modified.into()),
                    size: Some(size_field(object.size())),
                    ..Default::default()
                }),
                Entry::CommonPrefix(prefix) => rendered.common_prefixes.push(CommonPrefix {
                    prefix: Some(names.encode(prefix)),
                }),
            }
        }
        rendered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_round_trip_and_reject_garbage() {
        let name = "dir/ü x";
        assert_eq!(decode_token(&to_hex(name.as_bytes())).ok().as_deref(), Some(name));
        assert!(decode_token("abc").is_err());
        assert!(decode_token("zz").is_err());
        assert!(decode_token("ü1").is_err());
    }
}
