//! Follows a GET redirect (Hugging Face answers GetObject with 302 to a CDN edge): a plain
//! HTTP GET of the Location, with the Range but without the S3 Authorization header, which
//! the CDN would reject.

use super::s3::total_from_content_range;
use super::{GetResponse, StoreError, StoreResult};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::ops::Range;
use std::time::Duration;

pub struct RedirectClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl RedirectClient {
    pub fn new(connect_timeout: Duration) -> Result<RedirectClient, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("loading the system's TLS root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(RedirectClient {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    pub async fn get(
        &self,
        location: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        read_timeout: Duration,
    ) -> StoreResult<GetResponse> {
        let uri: http::Uri = location
            .parse()
            .map_err(|e| StoreError::Other(format!("bad redirect location '{location}': {e}")))?;
        let request = http::Request::get(uri)
            .header(http::header::RANGE, format!("bytes={}-{}", range.start, range.end - 1))
            .body(Empty::new())
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let response = tokio::time::timeout(read_timeout, self.client.request(request))
            .await
            .map_err(|_| StoreError::Transient(format!("redirected GET: no answer in {read_timeout:?}")))?
            .map_err(|e| StoreError::Transient(format!("redirected GET: {e}")))?;
        let status = response.status().as_u16();
        let header = |name: http::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if status == 416 {
            return Ok(GetResponse {
                etag: None,
                object_size: range.start,
                described: None,
                body: Box::pin(futures::stream::empty()),
            });
        }
        if !(200..300).contains(&status) {
            return Err(super::error::classify(
                Some(status),
                None,
                &format!("redirected GET answered {status}"),
            ));
        }
        let etag = header(http::header::ETAG);
        if let (Some(want), Some(got)) = (if_match, etag.as_deref())
            && want != got
        {
            return Err(StoreError::PreconditionFailed);
        }
        let object_size = header(http::header::CONTENT_RANGE)
            .and_then(|r| total_from_content_range(&r))
            .or_else(|| header(http::header::CONTENT_LENGTH).and_then(|l| l.parse().ok()))
            .unwrap_or(0);
        let body = http_body_util::BodyStream::new(response.into_body());
        let chunks = futures::stream::unfold(body, |mut body| async move {
            use futures::StreamExt;
            loop {
                match body.next().await? {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            return Some((Ok(data), body));
                        }
                    }
                    Err(e) => return Some((Err(StoreError::Transient(format!("redirected GET body: {e}"))), body)),
                }
            }
        });
        // 200 to a ranged request means the whole object: skip to the range's start.
        let skip = if status == 200 { range.start } else { 0 };
        let body = window(chunks, skip, range.end - range.start);
        Ok(GetResponse {
            etag,
            object_size,
            // A CDN's answer carries none of the object's user metadata.
            described: None,
            body: Box::pin(body),
        })
    }
}

/// The bytes `skip..skip + take` of a stream: a server that ignores Range sends all of them.
fn window(
    stream: impl futures::Stream<Item = StoreResult<Bytes>> + Send + 'static,
    skip: u64,
    take: u64,
) -> impl futures::Stream<Item = StoreResult<Bytes>> + Send + 'static {
    use futures::StreamExt;
    stream
        .scan((skip, take), |(to_skip, to_take), chunk| {
            let out = match chunk {
                _ if *to_take == 0 => None,
                Ok(mut b) => {
                    let n = (*to_skip).min(b.len() as u64) as usize;
                    *to_skip -= n as u64;
                    let mut rest = b.split_off(n);
                    rest.truncate((*to_take).min(rest.len() as u64) as usize);
                    *to_take -= rest.len() as u64;
                    Some(Ok(rest))
                }
                err => Some(err),
            };
            futures::future::ready(out)
        })
        .filter(|chunk| futures::future::ready(!matches!(chunk, Ok(b) if b.is_empty())))
}
