//! The `redirect_get` quirk. Hugging Face answers GetObject with `302 Found` to a
//! pre-signed CDN URL, and the CDN refuses requests that still carry the S3
//! `Authorization` header. This module builds those redirects and is the CDN: a second
//! listener serving object bytes (with ranges) to requests bearing the URL signature.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use s3s::dto::{Range, Timestamp, TimestampFormat};

use super::backend::{MemoryBackend, StoredObject};
use super::body::{ResponseBody, empty, s3_error_response, with_fault};
use super::percent;
use super::quirks::Quirks;
use super::stats::RequestStats;

/// The counter name of requests to the redirect listener.
const REDIRECT_GET: &str = "RedirectGet";

/// Where redirects point: the second listener, plus a per-server secret standing in
/// for the CDN URL signature.
#[derive(Debug)]
pub(crate) struct RedirectTarget {
    origin: String,
    signature: String,
}

impl RedirectTarget {
    /// `scheme`: https when the server runs behind TLS, as a real CDN does.
    pub(crate) fn new(scheme: &str, addr: SocketAddr) -> Self {
        Self {
            origin: format!("{scheme}://{addr}"),
            signature: format!("{:032x}", fastrand::u128(..)),
        }
    }

    pub(crate) fn location(&self, bucket: &str, key: &str) -> String {
        format!(
            "{}/{}/{}?sig={}",
            self.origin,
            percent::encode_key(bucket),
            percent::encode_key(key),
            self.signature
        )
    }

    fn is_signed(&self, query: Option<&str>) -> bool {
        percent::query_param(query, "sig").is_some_and(|signature| signature == self.signature)
    }
}

/// The `302 Found` sent instead of the object.
pub(crate) fn redirect_response(location: &str) -> Response<ResponseBody> {
    let Ok(location) = HeaderValue::from_str(location) else {
        return s3_error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "unrepresentable redirect",
        );
    };
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::FOUND;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The CDN-like listener's request handler.
#[derive(Clone)]
pub(crate) struct Cdn {
    pub(crate) backend: Arc<MemoryBackend>,
    pub(crate) quirks: Arc<Quirks>,
    pub(crate) stats: Arc<RequestStats>,
    pub(crate) target: Arc<RedirectTarget>,
}

impl Cdn {
    pub(crate) async fn handle(
        self,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, std::convert::Infallible> {
        let _in_flight = self.stats.record(REDIRECT_GET);
        tokio::time::sleep(self.quirks.latency()).await;
        Ok(self.respond(&req))
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<ResponseBody> {
        if let Some(failure) = self.quirks.injected_failure(REDIRECT_GET, req.method()) {
            return failure;
        }
        if req.headers().contains_key(header::AUTHORIZATION) {
            return s3_error_response(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return s3_error_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "only GET and HEAD");
        }
        if !self.target.is_signed(req.uri().query()) {
            return s3_error_response(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "missing or invalid URL signature",
            );
        }
        let Some(object) = self.object_at(req.uri().path()) else {
            return s3_error_response(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
        };
        let range = req.headers().get(header::RANGE).and_then(|value| value.to_str().ok());
        let response = object_response(&object, range);
        match self
            .quirks
            .take_body_fault()
            .filter(|_| req.method() == Method::GET && response.status().is_success())
        {
            Some(fault) => response.map(|body| with_fault(body, fault)),
            None => response,
        }
    }

    fn object_at(&self, path: &str) -> Option<StoredObject> {
        let path = percent::decode(path)?;
        let (bucket, key) = path.strip_prefix('/')?.split_once('/')?;
        self.backend.get_object(bucket, key)
    }
}

/// The object (or the requested byte range of it) with the headers a CDN sends.
fn object_response(object: &StoredObject, range: Option<&str>) -> Response<ResponseBody> {
    let total = object.size();
    // RFC 9110 lets a server ignore a Range header it cannot parse; S3 does the same.
    let (status, body, content_range) = match range.and_then(|range| Range::parse(range).ok()) {
        None => (StatusCode::OK, object.body.clone(), None),
        Some(range) => match range.check(total) {
            Ok(range) => {
                let slice = object.body.slice(range.start..range.end);
                (
                    StatusCode::PARTIAL_CONTENT,
                    slice,
                    Some(format!("bytes {}-{}/{total}", range.start, range.end - 1)),
                )
            }
            Err(_) => {
                let mut response = s3_error_response(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "The requested range is not satisfiable",
                );
                set_header(&mut response, header::CONTENT_RANGE, &format!("bytes */{total}"));
                return response;
            }
        },
    };
    let length = body.len();
    let mut response = Response::new(body.into_body().boxed_unsync());
    *response.status_mut() = status;
    set_header(&mut response, header::CONTENT_LENGTH, &length.to_string());
    set_header(&mut response, header::ETAG, &format!("\"{}\"", object.etag));
    set_header(&mut response, header::ACCEPT_RANGES, "bytes");
    if let Some(last_modified) = http_date(object) {
        set_header(&mut response, header::LAST_MODIFIED, &last_modified);
    }
    if let Some(content_type) = &object.content_type {
        set_header(&mut response, header::CONTENT_TYPE, content_type);
    }
    if let Some(content_range) = content_range {
        set_header(&mut response, header::CONTENT_RANGE, &content_range);
    }
    response
}

/// Sets a header, skipping a value HTTP cannot carry rather than failing the response.
fn set_header(response: &mut Response<ResponseBody>, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn http_date(object: &StoredObject) -> Option<String> {
    let mut formatted = Vec::new();
    Timestamp::from(object.last_modified)
        .format(TimestampFormat::HttpDate, &mut formatted)
        .ok()?;
    String::from_utf8(formatted).ok()
}
