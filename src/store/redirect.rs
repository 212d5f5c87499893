//! Follows a GET redirect (Hugging Face answers GetObject with 302 to a CDN edge): a plain
//! HTTP GET of the Location, with the Range but without the S3 Authorization header, which
//! the CDN would reject.

use super::error::classify;
use super::http_get::{HttpGets, ranged_answer};
use super::{GetResponse, StoreError, StoreResult};
use bytes::Bytes;
use http_body_util::Empty;
use std::ops::Range;
use std::time::Duration;

impl HttpGets {
    pub async fn get_redirected(
        &self,
        location: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        read_timeout: Duration,
    ) -> StoreResult<GetResponse> {
        let what = "redirected GET";
        let uri: http::Uri = location
            .parse()
            .map_err(|e| StoreError::Other(format!("bad redirect location '{location}': {e}")))?;
        let request = http::Request::get(uri)
            .header(http::header::RANGE, format!("bytes={}-{}", range.start, range.end - 1))
            .body(Empty::<Bytes>::new())
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let answer = self.send(request, what, read_timeout).await?;
        let status = answer.status;
        if !(200..300).contains(&status) && status != 416 {
            // A CDN's error page is no S3 error body: its status says it.
            return Err(classify(Some(status), None, &format!("{what} answered {status}")));
        }
        // A CDN's answer carries none of the object's user metadata.
        ranged_answer(answer, range, if_match, None)
    }
}
