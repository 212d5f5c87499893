//! GETs and HEADs with pooled connections: those that `s3/signed_reads.rs` signs, and a
//! redirect's Location fetched without credentials (`redirect.rs`), on connections of our
//! own, plain or TLS, whose bodies are read straight into the caller's memory
//! (`h1_get.rs`). An answer becomes a `GetResponse`, an `ObjectMeta` or one of our errors
//! here.

use super::CaBundle;
use super::body::Body;
use super::ca_bundle::trusted_roots;
use super::error::{classify, connection_failure, web_page_answer};
use super::h1_conn::client_config;
use super::h1_get::H1Gets;
use super::s3::total_from_content_range;
use super::{GetResponse, Metadata, ObjectMeta, StoreError, StoreResult};
use bytes::Bytes;
use futures::StreamExt;
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED};
use http_body_util::Empty;
use std::ops::Range;
use std::time::{Duration, SystemTime};

/// An error answer's body is read this far for its S3 code and message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub struct HttpGets {
    connections: H1Gets,
}

/// An answer's status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Body,
}

impl HttpGets {
    pub fn new(connect_timeout: Duration, max_idle: usize, ca_bundle: Option<&CaBundle>) -> Result<HttpGets, String> {
        let tls = client_config(trusted_roots(ca_bundle))?;
        Ok(HttpGets {
            // No more idle connections kept than requests may be in flight at once.
            connections: H1Gets::new(connect_timeout, max_idle, tls),
        })
    }

    /// Sends `request` and waits up to `timeout` for its answer's headers.
    pub async fn send(
        &self,
        request: http::Request<Empty<Bytes>>,
        what: &str,
        timeout: Duration,
    ) -> StoreResult<Answer> {
        let answer = tokio::time::timeout(timeout, self.connections.send(&request))
            .await
            .map_err(|_| StoreError::Transient(format!("{what}: no answer in {timeout:?}")))?
            .map_err(|e| connection_failure(format!("{what}: {e}")))?;
        Ok(Answer {
            status: answer.status,
            headers: answer.headers,
            body: Body::socket(answer.body, u64::MAX),
        })
    }
}

/// A 2xx (or 416) answer to a GET of `range` as a `GetResponse`. `described` names the key
/// when the answer's headers describe the object (S3's own; a CDN's do not).
pub fn ranged_answer(
    answer: Answer,
    range: Range<u64>,
    if_match: Option<&str>,
    described: Option<&str>,
) -> StoreResult<GetResponse> {
    if answer.status == 416 {
        // A range at or past the end of the object: nothing to read.
        return Ok(GetResponse {
            etag: None,
            object_size: range.start,
            described: None,
            body: Body::empty(),
        });
    }
    let headers = &answer.headers;
    let etag = header(headers, ETAG);
    if let (Some(want), Some(got)) = (if_match, etag.as_deref())
        && want != got
    {
        return Err(StoreError::PreconditionFailed);
    }
    let object_size = header(headers, CONTENT_RANGE)
        .and_then(|r| total_from_content_range(&r))
        .or_else(|| header(headers, CONTENT_LENGTH).and_then(|l| l.parse().ok()))
        .unwrap_or(0);
    let described = described.map(|key| object_described(key, object_size, headers));
    let len = range.end - range.start;
    // 200 to a ranged request means the whole object: skip to the range's start.
    let body = match (answer.status, answer.body) {
        (200, body) if range.start > 0 => Body::chunks(Box::pin(window(chunks_of(body), range.start, len))),
        (_, Body::Socket { body, .. }) => Body::Socket { body, left: len },
        (_, body) => Body::chunks(Box::pin(window(chunks_of(body), 0, len))),
    };
    Ok(GetResponse {
        etag,
        object_size,
        described,
        body,
    })
}

/// An answer's body (never a resuming one) as a stream of chunks.
fn chunks_of(body: Body) -> impl futures::Stream<Item = StoreResult<Bytes>> + Send + 'static {
    futures::stream::unfold(body, |mut body| async move { Some((body.next_here().await?, body)) })
}

/// The object `key` of `size` bytes as an answer's headers describe it (a HEAD's, a GET's).
pub fn object_described(key: &str, size: u64, headers: &HeaderMap) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size,
        etag: header(headers, ETAG),
        last_modified: header(headers, LAST_MODIFIED).and_then(|t| http_date(&t)),
        metadata: user_metadata(headers),
    }
}

/// An error answer as one of our errors: by its S3 code and message where its body has
/// them, by its status otherwise; a web page where S3 was expected is said to be one.
pub async fn refusal(mut answer: Answer, what: &str, timeout: Duration) -> StoreError {
    let content_type = header(&answer.headers, CONTENT_TYPE).unwrap_or_default();
    let read = async {
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_LIMIT {
            match answer.body.next_here().await {
                Some(Ok(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body
    };
    let body = tokio::time::timeout(timeout, read).await.unwrap_or_default();
    refusal_of(answer.status, &content_type, &body, what)
}

fn refusal_of(status: u16, content_type: &str, body: &[u8], what: &str) -> StoreError {
    if let Some(page) = web_page_answer(status, content_type, body) {
        return StoreError::Other(page);
    }
    let text = String::from_utf8_lossy(body);
    let code = xml_element(&text, "Code");
    let message = xml_element(&text, "Message").unwrap_or_default();
    let message = match (code, message.is_empty()) {
        (None, true) => format!("{what} answered HTTP {status}"),
        _ => message.to_string(),
    };
    classify(Some(status), code, &message)
}

/// The text of the first `<name>` element: S3's error bodies are flat and small.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + len].trim()).filter(|t| !t.is_empty())
}

pub fn header(headers: &HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `x-amz-meta-*` pairs, as the SDK hands them over: names lower case without the prefix.
fn user_metadata(headers: &HeaderMap) -> Metadata {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("x-amz-meta-")?;
            Some((name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        })
        .collect()
}

fn http_date(text: &str) -> Option<SystemTime> {
    let t = aws_smithy_types::DateTime::from_str(text, aws_smithy_types::date_time::Format::HttpDate).ok()?;
    SystemTime::try_from(t).ok()
}

/// The bytes `skip..skip + take` of a stream: a server that ignores Range sends all of them.
fn window(
    stream: impl futures::Stream<Item = StoreResult<Bytes>> + Send + 'static,
    skip: u64,
    take: u64,
) -> impl futures::Stream<Item = StoreResult<Bytes>> + Send + 'static {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_body_gives_its_code_and_message() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
        assert!(matches!(
            refusal_of(404, "application/xml", body, "GET"),
            StoreError::NotFound
        ));
        let body = b"<Error><Code>SignatureDoesNotMatch</Code><Message>bad sig</Message></Error>";
        let e = refusal_of(403, "application/xml", body, "GET");
        assert!(
            matches!(&e, StoreError::CredentialsRejected(m) if m.contains("bad sig")),
            "{e:?}"
        );
    }

    #[test]
    fn an_error_without_a_body_is_told_by_its_status() {
        assert!(matches!(refusal_of(503, "", b"", "GET"), StoreError::Transient(m) if m.contains("503")));
        assert!(matches!(
            refusal_of(412, "", b"", "GET"),
            StoreError::PreconditionFailed
        ));
    }

    #[test]
    fn a_web_page_is_said_to_be_one() {
        let e = refusal_of(200, "text/html", b"<!DOCTYPE html><html>portal</html>", "GET");
        assert!(matches!(&e, StoreError::Other(m) if m.contains("HTML page")), "{e:?}");
    }

    #[test]
    fn user_metadata_is_read_from_its_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-meta-s3vol-mode", "100755".parse().unwrap());
        headers.insert("content-type", "text/plain".parse().unwrap());
        let m = user_metadata(&headers);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("s3vol-mode").map(String::as_str), Some("100755"));
    }

    #[test]
    fn an_http_date_is_read() {
        let t = http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_445_412_480
        );
        assert!(http_date("yesterday").is_none());
    }

    #[tokio::test]
    async fn a_whole_object_sent_for_a_range_is_cut_to_it() {
        let chunks = futures::stream::iter(vec![Ok(Bytes::from_static(b"0123")), Ok(Bytes::from_static(b"456789"))]);
        let got: Vec<Bytes> = window(chunks, 3, 4).map(|c| c.unwrap()).collect().await;
        assert_eq!(got.concat(), b"3456");
    }
}
