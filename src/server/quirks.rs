//! Provider restrictions the server can emulate, switchable while it runs. Each quirk
//! mirrors a limitation s3vol must cope with on a real provider (Hugging Face's S3
//! gateway, Runpod network volumes, flaky gateways), so tests prove the workaround.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, Response, StatusCode, Uri, header};

use super::body::{BodyFault, ResponseBody, s3_error_response};
use super::lock;
use super::operation::{Operation, S3Call, declared_body_length};
use super::percent;

/// Runpod refuses single PutObject requests above 500 MB (decimal, the stricter reading).
const RUNPOD_MAX_PUT_SIZE: u64 = 500 * 1000 * 1000;

/// The answer an injected failure produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFailure {
    /// 502 Bad Gateway, as a proxy in front of the store answers when it is down.
    BadGateway,
    /// 503 with code `SlowDown`: throttling.
    SlowDown,
    /// 500 with code `InternalError`.
    InternalError,
}

/// Which requests an injected failure applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFilter {
    Any,
    /// An S3 operation name as counted by [`RequestStats`](super::RequestStats),
    /// e.g. "GetObject", "PutObject" or "RedirectGet".
    Operation(String),
    Method(Method),
}

impl RequestFilter {
    fn matches(&self, operation: &str, method: &Method) -> bool {
        match self {
            Self::Any => true,
            Self::Operation(name) => name == operation,
            Self::Method(wanted) => wanted == method,
        }
    }
}

#[derive(Debug)]
struct Countdown<T> {
    remaining: u32,
    what: T,
}

/// Take one use of a countdown whose payload passes `applies`; the slot empties at zero.
fn take_one<T: Clone>(slot: &Mutex<Option<Countdown<T>>>, applies: impl FnOnce(&T) -> bool) -> Option<T> {
    let mut slot = lock(slot);
    let countdown = slot.as_mut().filter(|countdown| applies(&countdown.what))?;
    countdown.remaining -= 1;
    let what = countdown.what.clone();
    if countdown.remaining == 0 {
        *slot = None;
    }
    Some(what)
}

fn arm<T>(slot: &Mutex<Option<Countdown<T>>>, count: u32, what: T) {
    *lock(slot) = (count > 0).then_some(Countdown { remaining: count, what });
}

/// Per-request decisions the backend must apply itself, passed through the request's
/// extensions: they act on signed headers, which cannot be altered before s3s has
/// verified the SigV4 signature.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BackendDirectives {
    /// Store no `x-amz-meta-*` metadata from this request.
    pub(crate) drop_user_metadata: bool,
    /// Answer this `ListObjectsV2` with an empty, truncated page whose next token is
    /// the token received.
    pub(crate) echo_continuation_token: bool,
}

/// The switchable quirks of a running server; every setter takes effect on the next
/// request. All quirks are off initially.
#[derive(Debug, Default)]
pub struct Quirks {
    reject_checksums: AtomicBool,
    redirect_get: AtomicBool,
    reject_list_v1: AtomicBool,
    drop_user_metadata: AtomicBool,
    reject_trailing_slash_keys: AtomicBool,
    reject_upload_part_copy: AtomicBool,
    reject_delete_objects: AtomicBool,
    repeat_continuation_token: AtomicBool,
    volume_full: AtomicBool,
    max_put_size: Mutex<Option<u64>>,
    latency: Mutex<Duration>,
    injected_errors: Mutex<Option<Countdown<(InjectedFailure, RequestFilter)>>>,
    resets_mid_body: Mutex<Option<Countdown<BodyFault>>>,
    stalled_bodies: Mutex<Option<Countdown<BodyFault>>>,
    echoed_tokens: Mutex<HashSet<String>>,
}

impl Quirks {
    /// Hugging Face: 400 `InvalidRequest` for any request with `x-amz-checksum-*`,
    /// `x-amz-sdk-checksum-algorithm`, `Content-Encoding: aws-chunked` or a
    /// `STREAMING-...-TRAILER` payload hash (the AWS SDK's default upload checksums).
    pub fn set_reject_checksums(&self, on: bool) {
        self.reject_checksums.store(on, Ordering::Relaxed);
    }

    /// Hugging Face: a successful, authenticated GetObject is answered `302 Found`
    /// pointing at the server's second (CDN-like) listener, which refuses requests
    /// carrying an `Authorization` header.
    pub fn set_redirect_get(&self, on: bool) {
        self.redirect_get.store(on, Ordering::Relaxed);
    }

    /// Hugging Face: ListObjects (V1) is answered 400 `NotImplemented`.
    pub fn set_reject_list_v1(&self, on: bool) {
        self.reject_list_v1.store(on, Ordering::Relaxed);
    }

    /// Hugging Face: `x-amz-meta-*` is neither stored nor returned.
    pub fn set_drop_user_metadata(&self, on: bool) {
        self.drop_user_metadata.store(on, Ordering::Relaxed);
    }

    /// Hugging Face: writing a key that ends in `/` (PutObject, CopyObject,
    /// CreateMultipartUpload) is answered 400 `InvalidArgument`.
    pub fn set_reject_trailing_slash_keys(&self, on: bool) {
        self.reject_trailing_slash_keys.store(on, Ordering::Relaxed);
    }

    /// Runpod, Hugging Face: UploadPartCopy is answered 501 `NotImplemented`.
    pub fn set_reject_upload_part_copy(&self, on: bool) {
        self.reject_upload_part_copy.store(on, Ordering::Relaxed);
    }

    /// Runpod: DeleteObjects (`POST ?delete`) is answered 501 `NotImplemented`.
    pub fn set_reject_delete_objects(&self, on: bool) {
        self.reject_delete_objects.store(on, Ordering::Relaxed);
    }

    /// Runpod: a PutObject whose declared size exceeds `limit` is answered 400
    /// `EntityTooLarge` (UploadPart is not limited).
    pub fn set_max_put_size(&self, limit: Option<u64>) {
        *lock(&self.max_put_size) = limit;
    }

    /// Runpod: the first ListObjectsV2 carrying a given continuation token gets an
    /// empty page, `IsTruncated=true` and that same token as `NextContinuationToken`;
    /// later requests with the token are served normally.
    pub fn set_repeat_continuation_token(&self, on: bool) {
        self.repeat_continuation_token.store(on, Ordering::Relaxed);
    }

    /// Runpod network volume out of space: PutObject, UploadPart, UploadPartCopy and
    /// CopyObject are answered 507 `InsufficientStorage`.
    pub fn set_volume_full(&self, on: bool) {
        self.volume_full.store(on, Ordering::Relaxed);
    }

    /// Delay added before answering every request, on both listeners.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.latency) = latency;
    }

    /// Answer the next `count` requests matching `filter` (on either listener) with
    /// `failure` instead of serving them. Replaces any previous injection.
    pub fn inject_errors(&self, count: u32, failure: InjectedFailure, filter: RequestFilter) {
        arm(&self.injected_errors, count, (failure, filter));
    }

    /// The next `count` object downloads (GetObject, or the redirect target) send only
    /// `after_bytes` bytes of the body, then drop the connection. A body no longer
    /// than `after_bytes` is sent whole but still uses up one of the `count`.
    pub fn reset_mid_body(&self, count: u32, after_bytes: u64) {
        arm(&self.resets_mid_body, count, BodyFault::Reset { after_bytes });
    }

    /// The next `count` object downloads send `after_bytes` bytes, pause for `stall`,
    /// then send the rest. Checked after [`reset_mid_body`](Self::reset_mid_body).
    pub fn stall_body(&self, count: u32, after_bytes: u64, stall: Duration) {
        arm(&self.stalled_bodies, count, BodyFault::Stall { after_bytes, stall });
    }

    /// Everything the Hugging Face S3 gateway refuses or does differently.
    pub fn emulate_hugging_face(&self) {
        self.set_reject_checksums(true);
        self.set_redirect_get(true);
        self.set_reject_list_v1(true);
        self.set_drop_user_metadata(true);
        self.set_reject_trailing_slash_keys(true);
        self.set_reject_upload_part_copy(true);
    }

    /// Everything Runpod's S3 API for network volumes refuses or does differently.
    pub fn emulate_runpod(&self) {
        self.set_reject_upload_part_copy(true);
        self.set_reject_delete_objects(true);
        self.set_max_put_size(Some(RUNPOD_MAX_PUT_SIZE));
        self.set_repeat_continuation_token(true);
    }

    /// Turns every quirk off and forgets pending injections and echoed tokens.
    pub fn clear(&self) {
        let flags = [
            &self.reject_checksums,
            &self.redirect_get,
            &self.reject_list_v1,
            &self.drop_user_metadata,
            &self.reject_trailing_slash_keys,
            &self.reject_upload_part_copy,
            &self.reject_delete_objects,
            &self.repeat_continuation_token,
            &self.volume_full,
        ];
        for flag in flags {
            flag.store(false, Ordering::Relaxed);
        }
        self.set_max_put_size(None);
        self.set_latency(Duration::ZERO);
        *lock(&self.injected_errors) = None;
        *lock(&self.resets_mid_body) = None;
        *lock(&self.stalled_bodies) = None;
        lock(&self.echoed_tokens).clear();
    }

    pub(crate) fn latency(&self) -> Duration {
        *lock(&self.latency)
    }

    pub(crate) fn redirects_get(&self) -> bool {
        self.redirect_get.load(Ordering::Relaxed)
    }

    pub(crate) fn drops_user_metadata(&self) -> bool {
        self.drop_user_metadata.load(Ordering::Relaxed)
    }

    /// Takes one injected failure if the request matches, as a ready response.
    pub(crate) fn injected_failure(&self, operation: &str, method: &Method) -> Option<Response<ResponseBody>> {
        let (failure, _) = take_one(&self.injected_errors, |(_, filter)| filter.matches(operation, method))?;
        Some(match failure {
            InjectedFailure::BadGateway => {
                s3_error_response(StatusCode::BAD_GATEWAY, "BadGateway", "injected bad gateway")
            }
            InjectedFailure::SlowDown => s3_error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            ),
            InjectedFailure::InternalError => s3_error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "injected internal error",
            ),
        })
    }

    /// Takes one pending body fault for an object download, if any.
    pub(crate) fn take_body_fault(&self) -> Option<BodyFault> {
        take_one(&self.resets_mid_body, |_| true).or_else(|| take_one(&self.stalled_bodies, |_| true))
    }

    /// The response a provider restriction gives `call` before it reaches s3s, if any.
    pub(crate) fn rejection(&self, call: &S3Call, headers: &HeaderMap) -> Option<Response<ResponseBody>> {
        let on = |flag: &AtomicBool| flag.load(Ordering::Relaxed);
        let op = call.operation;
        let (status, code, message) = if on(&self.reject_checksums) && carries_checksum(headers) {
            (StatusCode::BAD_REQUEST, "InvalidRequest", "checksums are not supported")
        } else if on(&self.reject_list_v1) && op == Operation::ListObjects {
            (
                StatusCode::BAD_REQUEST,
                "NotImplemented",
                "ListObjects (V1) is not supported; use ListObjectsV2",
            )
        } else if on(&self.reject_trailing_slash_keys)
            && writes_key(op)
            && call.key.as_ref().is_some_and(|k| k.ends_with('/'))
        {
            (
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "object keys must not end with '/'",
            )
        } else if on(&self.reject_upload_part_copy) && op == Operation::UploadPartCopy {
            (
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "UploadPartCopy is not supported",
            )
        } else if on(&self.reject_delete_objects) && op == Operation::DeleteObjects {
            (
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                "DeleteObjects is not supported",
            )
        } else if op == Operation::PutObject && self.exceeds_max_put_size(headers) {
            (
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size",
            )
        } else if on(&self.volume_full) && stores_data(op) {
            (
                StatusCode::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                "volume is full",
            )
        } else {
            return None;
        };
        Some(s3_error_response(status, code, message))
    }

    pub(crate) fn directives(&self, call: &S3Call, uri: &Uri) -> BackendDirectives {
        let echo_continuation_token = call.operation == Operation::ListObjectsV2
            && self.repeat_continuation_token.load(Ordering::Relaxed)
            && percent::query_param(uri.query(), "continuation-token")
                .is_some_and(|token| lock(&self.echoed_tokens).insert(token));
        BackendDirectives {
            drop_user_metadata: self.drops_user_metadata(),
            echo_continuation_token,
        }
    }

    fn exceeds_max_put_size(&self, headers: &HeaderMap) -> bool {
        let limit = *lock(&self.max_put_size);
        limit
            .zip(declared_body_length(headers))
            .is_some_and(|(limit, length)| length > limit)
    }
}

fn carries_checksum(headers: &HeaderMap) -> bool {
    let header_text = |name| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("");
    headers
        .keys()
        .any(|name| name.as_str().starts_with("x-amz-checksum-") || name == "x-amz-sdk-checksum-algorithm")
        || header_text(header::CONTENT_ENCODING.as_str()).contains("aws-chunked")
        || header_text("x-amz-content-sha256").starts_with("STREAMING-")
            && header_text("x-amz-content-sha256").contains("TRAILER")
}

fn writes_key(op: Operation) -> bool {
    matches!(
        op,
        Operation::PutObject | Operation::CopyObject | Operation::CreateMultipartUpload
    )
}

fn stores_data(op: Operation) -> bool {
    matches!(
        op,
        Operation::PutObject | Operation::UploadPart | Operation::UploadPartCopy | Operation::CopyObject
    )
}
