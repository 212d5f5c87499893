//! GETs: one attempt (or a redirect followed without credentials), and a body that
//! resumes where a broken one stopped, under the request's slot until its end.

use super::Inner;
use super::sdk_error::{error_chain, redirect_location, store_error};
use super::signed_reads::SignedAnswer;
use super::wire::metadata_map;
use crate::store::{Body, GetResponse, ObjectMeta, StoreError, StoreResult};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};
use tokio::sync::OwnedSemaphorePermit;

/// `bytes START-END/TOTAL` -> TOTAL.
pub(in crate::store) fn total_from_content_range(range: &str) -> Option<u64> {
    range.rsplit_once('/')?.1.trim().parse().ok()
}

impl Inner {
    /// A ranged GET whose body resumes after a broken stream, holding its slot to the end.
    pub(super) async fn get_range(
        self: &Arc<Self>,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<GetResponse> {
        if range.is_empty() {
            return Ok(GetResponse {
                etag: None,
                object_size: 0,
                described: None,
                body: Body::empty(),
            });
        }
        let s = self;
        let slot = s.slot().await;
        let attempts = AtomicU64::new(0);
        let requested = Instant::now();
        let first = s
            .with_fresh_credentials("GetObject", || {
                s.settings.retry.run("GetObject", || async {
                    s.count_retry("GetObject", &attempts);
                    let started = Instant::now();
                    let what = format!("GetObject bytes={}-{}", range.start, range.end.saturating_sub(1));
                    s.counted(&what, key, started, s.get_once(key, range.clone(), if_match).await)
                })
            })
            .await?;
        let end = range.end.min(first.object_size);
        let state = ResumingBody {
            inner: s.clone(),
            key: key.to_string(),
            next: range.start,
            end,
            etag: if_match.map(str::to_string).or_else(|| first.etag.clone()),
            body: first.body,
            resumes_left: s.settings.retry.max_attempts.saturating_sub(1),
            done: false,
            requested,
            _slot: slot,
        };
        Ok(GetResponse {
            etag: first.etag,
            object_size: first.object_size,
            described: first.described,
            body: Body::Resuming(Box::new(state)),
        })
    }

    /// One attempt at a ranged GET: signed by us or by the SDK, or a redirect's Location
    /// fetched without credentials.
    pub(super) async fn get_once(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> StoreResult<GetResponse> {
        // A provider that refuses If-Match on GET has the ETag compared on the answer only.
        let condition = if_match.filter(|_| self.resolved.profile.get_if_match);
        let Some(signed) = &self.signed_reads else {
            return self.sdk_get_once(key, range, if_match, condition).await;
        };
        let timeout = self.settings.read_timeout.min(self.settings.operation_timeout);
        match signed
            .get(&self.http, key, range.clone(), if_match, condition, timeout)
            .await?
        {
            SignedAnswer::Got(response) => Ok(response),
            SignedAnswer::Redirected(location) if self.follow_redirects => {
                self.http
                    .get_redirected(&location, range, if_match, self.settings.read_timeout)
                    .await
            }
            SignedAnswer::Redirected(location) => Err(StoreError::Other(format!(
                "GetObject {key:?} was redirected to {location}: is the endpoint or the region right?"
            ))),
        }
    }

    /// The SDK's GET, for a bucket whose endpoint it must sign for.
    async fn sdk_get_once(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        condition: Option<&str>,
    ) -> StoreResult<GetResponse> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key).range(format!(
            "bytes={}-{}",
            range.start,
            range.end - 1
        ));
        req = req.set_if_match(condition.map(str::to_string));
        let resp = match req.send().await {
            Ok(r) => r,
            Err(err) => {
                if let (Some(location), true) = (redirect_location(&err), self.follow_redirects) {
                    return self
                        .http
                        .get_redirected(&location, range, if_match, self.settings.read_timeout)
                        .await;
                }
                if err.as_service_error().and_then(|e| e.code()) == Some("InvalidRange") {
                    // A range at or past the end of the object: nothing to read.
                    return Ok(GetResponse {
                        etag: None,
                        object_size: range.start,
                        described: None,
                        body: Body::empty(),
                    });
                }
                return Err(store_error(&err));
            }
        };
        let etag = resp.e_tag().map(str::to_string);
        if let (Some(want), Some(got)) = (if_match, etag.as_deref())
            && want != got
        {
            return Err(StoreError::PreconditionFailed);
        }
        let object_size = resp
            .content_range()
            .and_then(total_from_content_range)
            .or_else(|| resp.content_length().and_then(|l| u64::try_from(l).ok()))
            .unwrap_or(0);
        let described = ObjectMeta {
            key: key.to_string(),
            size: object_size,
            etag: etag.clone(),
            last_modified: resp.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
            metadata: metadata_map(resp.metadata()),
        };
        let body = futures::stream::unfold(resp.body, |mut body: ByteStream| async move {
            let chunk = body.next().await?;
            Some((chunk.map_err(|e| StoreError::Transient(error_chain(&e))), body))
        });
        Ok(GetResponse {
            etag,
            object_size,
            described: Some(described),
            body: Body::chunks(Box::pin(body)),
        })
    }
}

/// Where a GET's body stands, so that a broken one resumes at the next byte.
pub struct ResumingBody {
    inner: Arc<Inner>,
    key: String,
    next: u64,
    end: u64,
    etag: Option<String>,
    /// The body of the GET that is on; never a resuming one itself.
    body: Body,
    resumes_left: u32,
    done: bool,
    /// When the GET went out: its whole duration is counted at the body's end.
    requested: Instant,
    _slot: OwnedSemaphorePermit,
}

impl ResumingBody {
    pub async fn next(&mut self) -> Option<StoreResult<Bytes>> {
        if self.done {
            return None;
        }
        loop {
            let read_timeout = self.inner.settings.read_timeout;
            let failure = match tokio::time::timeout(read_timeout, self.body.next_here()).await {
                Ok(Some(Ok(chunk))) => {
                    self.received(chunk.len());
                    return Some(Ok(chunk));
                }
                Ok(None) => self.ended()?,
                Ok(Some(Err(e))) => e,
                Err(_) => StoreError::Transient(format!("no data for {read_timeout:?}")),
            };
            if let Err(e) = self.resume(failure).await {
                return Some(Err(e));
            }
        }
    }

    pub async fn read_into(&mut self, dst: &mut [u8]) -> StoreResult<usize> {
        if self.done || dst.is_empty() {
            return Ok(0);
        }
        loop {
            let read_timeout = self.inner.settings.read_timeout;
            let failure = match tokio::time::timeout(read_timeout, self.body.read_here(dst)).await {
                Ok(Ok(0)) => match self.ended() {
                    Some(failure) => failure,
                    None => return Ok(0),
                },
                Ok(Ok(n)) => {
                    self.received(n);
                    return Ok(n);
                }
                Ok(Err(e)) => e,
                Err(_) => StoreError::Transient(format!("no data for {read_timeout:?}")),
            };
            self.resume(failure).await?;
        }
    }

    pub fn left(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }

    fn received(&mut self, n: usize) {
        self.next += n as u64;
        self.inner.settings.metrics.received(n as u64);
    }

    /// At the body's end: `None` if it is all there, else the failure to resume from.
    fn ended(&mut self) -> Option<StoreError> {
        if self.next < self.end {
            return Some(StoreError::Transient("body ended early".into()));
        }
        self.done = true;
        self.inner.settings.metrics.get_body_done(self.requested.elapsed());
        None
    }

    /// After `failure`, a new GET for the rest of the range; the failure itself once the
    /// resumes are spent or it is not transient.
    async fn resume(&mut self, failure: StoreError) -> StoreResult<()> {
        if !failure.is_transient() || self.resumes_left == 0 {
            self.done = true;
            return Err(failure);
        }
        self.resumes_left -= 1;
        let attempt = self.inner.settings.retry.max_attempts - self.resumes_left;
        tracing::debug!(key = %self.key, at = self.next, %failure, "resuming GET body");
        tokio::time::sleep(self.inner.settings.retry.delay(attempt)).await;
        let etag = self.etag.clone();
        let range = self.next..self.end;
        let what = format!(
            "GetObject (resumed) bytes={}-{}",
            range.start,
            range.end.saturating_sub(1)
        );
        self.inner.settings.metrics.s3_retry("GetObject");
        let started = Instant::now();
        let answer = self.inner.get_once(&self.key, range, etag.as_deref()).await;
        match self.inner.counted(&what, &self.key, started, answer) {
            Ok(resp) => self.body = resp.body,
            Err(e) if e.is_transient() => self.body = Body::chunks(Box::pin(futures::stream::once(async { Err(e) }))),
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_total() {
        assert_eq!(total_from_content_range("bytes 0-99/1000"), Some(1000));
        assert_eq!(total_from_content_range("bytes */0"), Some(0));
    }
}
