//! Classifies a path-style HTTP request into the S3 operation it invokes, so the quirk
//! layer and the request counters can reason in S3 terms before s3s parses it.

use http::{HeaderMap, Method, Uri};

use super::percent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    ListBuckets,
    CreateBucket,
    HeadBucket,
    DeleteBucket,
    ListObjects,
    ListObjectsV2,
    ListMultipartUploads,
    DeleteObjects,
    HeadObject,
    GetObject,
    PutObject,
    CopyObject,
    DeleteObject,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    /// Anything else; s3s decides how to answer it.
    Other,
}

impl Operation {
    /// The name AWS uses for the operation; the key of the request counters.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ListBuckets => "ListBuckets",
            Self::CreateBucket => "CreateBucket",
            Self::HeadBucket => "HeadBucket",
            Self::DeleteBucket => "DeleteBucket",
            Self::ListObjects => "ListObjects",
            Self::ListObjectsV2 => "ListObjectsV2",
            Self::ListMultipartUploads => "ListMultipartUploads",
            Self::DeleteObjects => "DeleteObjects",
            Self::HeadObject => "HeadObject",
            Self::GetObject => "GetObject",
            Self::PutObject => "PutObject",
            Self::CopyObject => "CopyObject",
            Self::DeleteObject => "DeleteObject",
            Self::CreateMultipartUpload => "CreateMultipartUpload",
            Self::UploadPart => "UploadPart",
            Self::UploadPartCopy => "UploadPartCopy",
            Self::CompleteMultipartUpload => "CompleteMultipartUpload",
            Self::AbortMultipartUpload => "AbortMultipartUpload",
            Self::ListParts => "ListParts",
            Self::Other => "Other",
        }
    }
}

/// What a request addresses and does, with the bucket and key percent-decoded.
#[derive(Debug)]
pub(crate) struct S3Call {
    pub(crate) operation: Operation,
    pub(crate) bucket: Option<String>,
    pub(crate) key: Option<String>,
}

impl S3Call {
    pub(crate) fn classify(method: &Method, uri: &Uri, headers: &HeaderMap) -> Self {
        let Some(path) = percent::decode(uri.path()) else {
            return Self {
                operation: Operation::Other,
                bucket: None,
                key: None,
            };
        };
        let path = path.strip_prefix('/').unwrap_or(&path);
        let (bucket, key) = match path.split_once('/') {
            Some((bucket, key)) => (bucket, Some(key).filter(|key| !key.is_empty())),
            None => (path, None),
        };
        let operation = match (bucket.is_empty(), key.is_some()) {
            (true, _) => root_operation(method),
            (false, false) => bucket_operation(method, uri.query()),
            (false, true) => object_operation(method, uri.query(), headers),
        };
        Self {
            operation,
            bucket: Some(bucket.to_owned()).filter(|bucket| !bucket.is_empty()),
            key: key.map(str::to_owned),
        }
    }
}

/// The payload size a request announces: the decoded length for `aws-chunked`
/// uploads, otherwise Content-Length.
pub(crate) fn declared_body_length(headers: &HeaderMap) -> Option<u64> {
    let number = |name| headers.get(name)?.to_str().ok()?.parse::<u64>().ok();
    number("x-amz-decoded-content-length").or_else(|| number("content-length"))
}

fn root_operation(method: &Method) -> Operation {
    if method == Method::GET {
        Operation::ListBuckets
    } else {
        Operation::Other
    }
}

fn has(query: Option<&str>, name: &str) -> bool {
    percent::query_param(query, name).is_some()
}

fn bucket_operation(method: &Method, query: Option<&str>) -> Operation {
    let has = |name| has(query, name);
    match *method {
        Method::GET if percent::query_param(query, "list-type").as_deref() == Some("2") => Operation::ListObjectsV2,
        Method::GET if has("uploads") => Operation::ListMultipartUploads,
        Method::GET
            if ["location", "versioning", "versions", "acl", "policy"]
                .into_iter()
                .any(has) =>
        {
            Operation::Other
        }
        Method::GET => Operation::ListObjects,
        Method::PUT => Operation::CreateBucket,
        Method::HEAD => Operation::HeadBucket,
        Method::DELETE => Operation::DeleteBucket,
        Method::POST if has("delete") => Operation::DeleteObjects,
        _ => Operation::Other,
    }
}

fn object_operation(method: &Method, query: Option<&str>, headers: &HeaderMap) -> Operation {
    let has = |name| has(query, name);
    let copies = headers.contains_key("x-amz-copy-source");
    match *method {
        Method::GET if has("uploadId") => Operation::ListParts,
        Method::GET => Operation::GetObject,
        Method::HEAD => Operation::HeadObject,
        Method::PUT if has("partNumber") && copies => Operation::UploadPartCopy,
        Method::PUT if has("partNumber") => Operation::UploadPart,
        Method::PUT if copies => Operation::CopyObject,
        Method::PUT => Operation::PutObject,
        Method::POST if has("uploads") => Operation::CreateMultipartUpload,
        Method::POST if has("uploadId") => Operation::CompleteMultipartUpload,
        Method::DELETE if has("uploadId") => Operation::AbortMultipartUpload,
        Method::DELETE => Operation::DeleteObject,
        _ => Operation::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(method: Method, uri: &str, copy: bool) -> S3Call {
        let mut headers = HeaderMap::new();
        if copy {
            headers.insert("x-amz-copy-source", "b/src".parse().expect("static header"));
        }
        S3Call::classify(&method, &uri.parse().expect("static uri"), &headers)
    }

    #[test]
    fn classifies_bucket_requests() {
        assert_eq!(classify(Method::GET, "/", false).operation, Operation::ListBuckets);
        assert_eq!(
            classify(Method::GET, "/b?list-type=2&prefix=x", false).operation,
            Operation::ListObjectsV2
        );
        assert_eq!(
            classify(Method::GET, "/b/?prefix=x", false).operation,
            Operation::ListObjects
        );
        assert_eq!(classify(Method::GET, "/b?location", false).operation, Operation::Other);
        assert_eq!(
            classify(Method::POST, "/b?delete", false).operation,
            Operation::DeleteObjects
        );
        assert_eq!(classify(Method::HEAD, "/b", false).operation, Operation::HeadBucket);
    }

    #[test]
    fn classifies_object_requests_and_decodes_the_key() {
        let call = classify(Method::GET, "/b/dir/a%20b?x-id=GetObject", false);
        assert_eq!(call.operation, Operation::GetObject);
        assert_eq!(call.bucket.as_deref(), Some("b"));
        assert_eq!(call.key.as_deref(), Some("dir/a b"));
        assert_eq!(classify(Method::PUT, "/b/d/", false).key.as_deref(), Some("d/"));
        assert_eq!(classify(Method::PUT, "/b/k", true).operation, Operation::CopyObject);
        assert_eq!(
            classify(Method::PUT, "/b/k?partNumber=1&uploadId=u", true).operation,
            Operation::UploadPartCopy
        );
        assert_eq!(
            classify(Method::PUT, "/b/k?partNumber=1&uploadId=u", false).operation,
            Operation::UploadPart
        );
        assert_eq!(
            classify(Method::POST, "/b/k?uploads", false).operation,
            Operation::CreateMultipartUpload
        );
        assert_eq!(
            classify(Method::POST, "/b/k?uploadId=u", false).operation,
            Operation::CompleteMultipartUpload
        );
        assert_eq!(
            classify(Method::DELETE, "/b/k?uploadId=u", false).operation,
            Operation::AbortMultipartUpload
        );
    }
}
