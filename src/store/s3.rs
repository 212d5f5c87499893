//! The object store over S3, with aws-sdk-s3: client built from the provider profile,
//! our own retries and timeouts, a bound on concurrent requests, resumable GET bodies and
//! GET redirects followed without credentials.

use super::error::{NO_SUCH_BUCKET, classify};
use super::redirect::RedirectClient;
use super::*;
use crate::credentials::{CredentialsFile, StaticCredentials};
use crate::metrics::Metrics;
use crate::provider::{Addressing, ChecksumPolicy, Resolved};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, Delete, EncodingType, MetadataDirective, ObjectIdentifier};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Knobs of the S3 client that are not provider facts.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Longest silence while waiting for a response or for the next body chunk.
    pub read_timeout: Duration,
    /// Longest time for one attempt of an ordinary request (uploads of a part included).
    pub operation_timeout: Duration,
    /// CompleteMultipartUpload can take minutes on Runpod for 10 GB+ objects.
    pub complete_timeout: Duration,
    /// Requests in flight at once; more wait for a slot.
    pub max_requests: usize,
    pub aws_profile: Option<String>,
    pub credentials: Option<StaticCredentials>,
    /// `--credentials-file`, re-read when it changes; wins over `credentials`.
    pub credentials_file: Option<CredentialsFile>,
    /// Where each request's outcome, latency and bytes are counted.
    pub metrics: Arc<Metrics>,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(300),
            complete_timeout: Duration::from_secs(1800),
            max_requests: 256,
            aws_profile: None,
            credentials: None,
            credentials_file: None,
            metrics: Arc::new(Metrics::default()),
        }
    }
}

#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    redirects: Option<RedirectClient>,
    bucket: String,
    resolved: Resolved,
    settings: S3Settings,
    slots: Arc<Semaphore>,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl S3Store {
    pub async fn connect(resolved: &Resolved, settings: S3Settings) -> Result<S3Store, String> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .operation_attempt_timeout(settings.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            // Retries are ours (RetryPolicy): the same policy for every call and for
            // resumed bodies, with no shared retry quota that starves under load.
            .retry_config(RetryConfig::disabled());
        if let Some(profile) = &settings.aws_profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &resolved.region {
            loader = loader.region(Region::new(region.clone()));
        } else if resolved.endpoint.is_some() {
            // A custom endpoint is not on EC2's metadata service: environment, then the
            // profile, then us-east-1 (which S3-compatible servers accept).
            let mut from_profile = aws_config::profile::ProfileFileRegionProvider::builder();
            if let Some(profile) = &settings.aws_profile {
                from_profile = from_profile.profile_name(profile);
            }
            let chain = aws_config::meta::region::RegionProviderChain::first_try(
                aws_config::environment::EnvironmentVariableRegionProvider::new(),
            )
            .or_else(from_profile.build())
            .or_else(Region::new("us-east-1"));
            loader = loader.region(chain);
        }
        let creds = settings
            .credentials
            .clone()
            .or_else(|| provider_env_credentials(resolved));
        if let Some(file) = &settings.credentials_file {
            loader = loader.credentials_provider(file.clone());
        } else if let Some(c) = creds {
            loader = loader.credentials_provider(c.to_sdk("s3vol"));
        }
        let sdk = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(resolved.profile.addressing == Addressing::Path);
        if sdk.region().is_none() {
            config = config.region(Region::new("us-east-1"));
        }
        if settings.credentials_file.is_some() {
            // The SDK would keep file credentials, which carry no expiry, for 15 minutes;
            // the file provider is cheap to ask for every request and sees a rotation.
            config = config.identity_cache(IdentityCache::no_cache());
        }
        if let Some(endpoint) = &resolved.endpoint {
            config = config.endpoint_url(endpoint);
        }
        if resolved.profile.checksums == ChecksumPolicy::WhenRequired {
            config = config.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        }
        // Response checksums are not asked for: ranged GETs (all our reads) carry none on
        // S3, a full-object CRC costs CPU on the hot read path, and If-Match already
        // guarantees the bytes belong to the version we read.
        config = config.response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        let redirects = if resolved.profile.get_redirects {
            Some(RedirectClient::new(settings.connect_timeout)?)
        } else {
            None
        };
        Ok(S3Store {
            inner: Arc::new(Inner {
                client: Client::from_conf(config.build()),
                redirects,
                bucket: resolved.bucket.clone(),
                resolved: resolved.clone(),
                slots: Arc::new(Semaphore::new(settings.max_requests.max(1))),
                settings,
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        })
    }

    pub fn resolved(&self) -> &Resolved {
        &self.inner.resolved
    }

    /// Opens `connections` connections to the endpoint with as many concurrent HeadBucket
    /// requests, answers ignored. The first lookup after a mount sends a LIST and a HEAD
    /// at once, then a GET: on a link 40 ms long, each one that must open its own
    /// connection first pays a round trip (two with TLS) more.
    pub async fn warm_up(&self, connections: usize) {
        let requests = (0..connections).map(|_| {
            let head = self.inner.client.head_bucket().bucket(&self.inner.bucket).send();
            tokio::time::timeout(self.inner.settings.connect_timeout * 2, head)
        });
        futures::future::join_all(requests).await;
    }
}

fn provider_env_credentials(resolved: &Resolved) -> Option<StaticCredentials> {
    let (access, secret) = resolved.profile.credential_env?;
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return None;
    }
    Some(StaticCredentials {
        access_key: std::env::var(access).ok()?,
        secret_key: std::env::var(secret).ok()?,
        session_token: None,
    })
}

/// Turns an SDK error into our error kinds, by HTTP status and S3 error code.
const NO_CREDENTIALS: &str = "no credentials found: set AWS_ACCESS_KEY_ID and \
    AWS_SECRET_ACCESS_KEY (or the provider's variables), or use --credentials-file FILE or --profile NAME";

fn store_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    if let Some(raw) = err.raw_response()
        && let Some(wrong) = not_s3(raw, err)
    {
        return StoreError::Other(wrong);
    }
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let e = se.err();
            // Without a message: the code says it all when there is one; otherwise (a body
            // the SDK could not parse) the source chain says what was wrong.
            let message = match (e.message(), e.code()) {
                (Some(m), _) => m.to_string(),
                (None, Some(_)) => String::new(),
                (None, None) => error_chain(err),
            };
            classify(Some(status), e.code(), &message)
        }
        SdkError::TimeoutError(_) => StoreError::Transient("request timed out".into()),
        SdkError::DispatchFailure(df) => {
            let detail = error_chain(err);
            let credentials = [
                "while loading credentials",
                "credential provider",
                "no credentials found",
            ];
            if credentials.iter().any(|c| detail.contains(c)) {
                tracing::debug!("loading credentials: {detail}");
                if detail.contains("SSO") || detail.contains("UnauthorizedException") {
                    // An SSO profile whose login expired: the hint says to log in again.
                    let cause = detail.rsplit(": ").next().unwrap_or_default();
                    return StoreError::CredentialsExpired(format!("the SSO login gives no credentials ({cause})"));
                }
                // Not worth retrying, and the SDK's chain of reasons (down to the EC2
                // metadata service) does not say what to do.
                return StoreError::AccessDenied(NO_CREDENTIALS.into());
            }
            if df.is_user() {
                StoreError::Other(detail)
            } else {
                StoreError::Transient(detail)
            }
        }
        SdkError::ResponseError(re) => {
            let status = re.raw().status().as_u16();
            classify(Some(status), None, &error_chain(err))
        }
        _ => StoreError::Other(error_chain(err)),
    }
}

/// Says what is wrong when the endpoint's answer is not S3 at all: a web page (a wrong
/// `--endpoint-url`, a captive portal) or XML that does not parse.
fn not_s3(raw: &aws_sdk_s3::config::http::HttpResponse, err: &dyn std::error::Error) -> Option<String> {
    let content_type = raw
        .headers()
        .get("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = raw.body().bytes().unwrap_or_default();
    let start = String::from_utf8_lossy(&body[..body.len().min(64)])
        .trim_start()
        .to_ascii_lowercase();
    let status = raw.status().as_u16();
    // Some servers label empty or XML error bodies text/html (moto's 404 to a HEAD): the
    // body decides.
    let html_body = start.starts_with("<!doctype html") || start.starts_with("<html");
    let labelled_html = content_type.starts_with("text/html")
        && !start.is_empty()
        && !start.starts_with("<?xml")
        && !start.starts_with("<error");
    if html_body || labelled_html {
        return Some(format!(
            "the endpoint answered with an HTML page (HTTP {status}), not an S3 response: is --endpoint-url right?"
        ));
    }
    let chain = error_chain(err);
    (chain.contains("error parsing XML") || chain.contains("invalid XML")).then(|| {
        let preview: String = String::from_utf8_lossy(&body[..body.len().min(80)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        format!("the endpoint's answer (HTTP {status}) is not valid S3 XML (it starts {preview:?})")
    })
}

/// The whole `source()` chain: the SDK's top-level messages alone ("dispatch failure") do
/// not say what failed (connection refused, DNS, TLS...).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn redirect_location<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<String> {
    let raw = err.raw_response()?;
    if !matches!(raw.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    raw.headers().get("location").map(str::to_string)
}

/// DeleteObjects is the one call whose checksum S3 requires, so even "checksums only when
/// required" puts `x-amz-checksum-crc32` on it, which a gateway that refuses checksum
/// headers (Hugging Face) rejects. Content-MD5, what S3 first required there, replaces it.
/// Runs before signing, so the signature covers the final headers.
fn content_md5_instead_of_checksums(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    use s3s::crypto::{Checksum, Md5};
    let Some(body) = req.body().bytes() else {
        return;
    };
    let md5 = aws_smithy_types::base64::encode(Md5::checksum(body));
    let headers = req.headers_mut();
    let checksums: Vec<String> = headers
        .iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("x-amz-checksum-") || *name == "x-amz-sdk-checksum-algorithm")
        .map(str::to_string)
        .collect();
    for name in checksums {
        headers.remove(name);
    }
    headers.insert("content-md5", md5);
}

/// `bytes START-END/TOTAL` -> TOTAL.
pub(super) fn total_from_content_range(range: &str) -> Option<u64> {
    range.rsplit_once('/')?.1.trim().parse().ok()
}

impl Inner {
    async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the request semaphore is never closed")
    }

    /// One request under a slot, retried by the policy.
    async fn call<T, F, Fut>(&self, what: &str, key: &str, op: F) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let attempts = AtomicU64::new(0);
        self.with_fresh_credentials(what, || {
            self.settings.retry.run(what, || async {
                self.count_retry(what, &attempts);
                let _slot = self.slot().await;
                let started = Instant::now();
                self.counted(what, key, started, op().await)
            })
        })
        .await
    }

    /// Runs `attempts`; when the server refused the credentials and the credentials file
    /// now holds others (a rotated key or session token), runs it once more with those.
    async fn with_fresh_credentials<T, F, Fut>(&self, what: &str, attempts: F) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let Some(file) = &self.settings.credentials_file else {
            return attempts().await;
        };
        let signed_with = file.generation();
        match attempts().await {
            Err(e) if e.may_be_stale_credentials() && file.refresh() != signed_with => {
                tracing::debug!("{what}: {e}; retrying with the new credentials");
                attempts().await
            }
            other => other,
        }
    }

    /// Counts an attempt after the first of one call as a retry.
    fn count_retry(&self, what: &str, attempts: &AtomicU64) {
        if attempts.fetch_add(1, Ordering::Relaxed) > 0 {
            self.settings.metrics.s3_retry(what);
        }
    }

    /// Counts one request and logs it at debug level (`--debug`): operation, key, outcome
    /// and time to the answer (for a GET, to its response headers).
    fn counted<T>(&self, what: &str, key: &str, started: Instant, result: StoreResult<T>) -> StoreResult<T> {
        let elapsed = started.elapsed();
        let outcome = result.as_ref().map_or_else(StoreError::kind, |_| "ok");
        self.settings.metrics.s3_done(what, outcome, elapsed);
        let ms = elapsed.as_secs_f64() * 1000.0;
        match &result {
            Ok(_) => tracing::debug!(target: "s3vol::request", "{what} {key:?}: ok in {ms:.1} ms"),
            Err(e) => tracing::debug!(target: "s3vol::request", "{what} {key:?}: {e} in {ms:.1} ms"),
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        result.map_err(|e| self.explain(e))
    }

    /// S3's NoSuchBucket message does not say which bucket, and ExpiredToken does not say
    /// where the credentials came from: these do.
    fn explain(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Other(m) if m.starts_with(NO_SUCH_BUCKET) => {
                let endpoint = self.resolved.endpoint.as_deref().unwrap_or("the AWS default endpoint");
                StoreError::Other(format!("{NO_SUCH_BUCKET} '{}' at {endpoint}", self.bucket))
            }
            StoreError::CredentialsExpired(m) => StoreError::CredentialsExpired(format!("{m}; {}", self.renew_hint())),
            e => e,
        }
    }

    /// What to do about expired credentials, by where they come from.
    fn renew_hint(&self) -> String {
        if let Some(file) = &self.settings.credentials_file {
            return format!(
                "write new ones to {} (read again at the next request)",
                file.path().display()
            );
        }
        match &self.settings.aws_profile {
            Some(p) => format!("re-login (aws sso login --profile {p}) or renew profile '{p}'"),
            None => {
                "re-login (aws sso login) or renew them, then remount; --credentials-file FILE is re-read while mounted"
                    .into()
            }
        }
    }

    fn check_name(&self, key: &str) -> StoreResult<()> {
        match self.resolved.forbidden_key(key) {
            Some(why) => Err(StoreError::InvalidName(format!("'{key}' {why}"))),
            None => Ok(()),
        }
    }

    fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, encode_key(key))
    }

    /// One attempt at a ranged GET: the SDK's, or a redirect's Location fetched without
    /// credentials.
    async fn get_once(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> StoreResult<GetResponse> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key).range(format!(
            "bytes={}-{}",
            range.start,
            range.end - 1
        ));
        if self.resolved.profile.get_if_match {
            req = req.set_if_match(if_match.map(str::to_string));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(err) => {
                if let (Some(location), Some(client)) = (redirect_location(&err), &self.redirects) {
                    return client.get(&location, range, if_match, self.settings.read_timeout).await;
                }
                if err.as_service_error().and_then(|e| e.code()) == Some("InvalidRange") {
                    // A range at or past the end of the object: nothing to read.
                    return Ok(GetResponse {
                        etag: None,
                        object_size: range.start,
                        body: Box::pin(futures::stream::empty()),
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
        let body = futures::stream::unfold(resp.body, |mut body: ByteStream| async move {
            let chunk = body.next().await?;
            Some((chunk.map_err(|e| StoreError::Transient(error_chain(&e))), body))
        });
        Ok(GetResponse {
            etag,
            object_size,
            body: Box::pin(body),
        })
    }
}

pub(super) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes a key of an `encoding-type=url` listing: `%XX` escapes, and `+` for a space
/// (S3 encodes a literal `+` as `%2B`). A malformed escape is kept as it is.
fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn metadata_map(m: Option<&std::collections::HashMap<String, String>>) -> Metadata {
    m.map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
        .unwrap_or_default()
}

fn hash_map(m: &Metadata) -> Option<std::collections::HashMap<String, String>> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Where a streamed GET body stands, so that a broken stream resumes at the next byte.
struct BodyState {
    inner: Arc<Inner>,
    key: String,
    next: u64,
    end: u64,
    etag: Option<String>,
    body: BodyStream,
    resumes_left: u32,
    done: bool,
    /// When the GET went out: its whole duration is counted at the body's end.
    requested: Instant,
    _slot: OwnedSemaphorePermit,
}

impl BodyState {
    async fn next_chunk(mut self) -> Option<(StoreResult<Bytes>, BodyState)> {
        if self.done {
            return None;
        }
        loop {
            let read_timeout = self.inner.settings.read_timeout;
            let failure = match tokio::time::timeout(read_timeout, self.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    self.next += chunk.len() as u64;
                    self.inner.settings.metrics.received(chunk.len() as u64);
                    return Some((Ok(chunk), self));
                }
                Ok(None) if self.next >= self.end => {
                    self.inner.settings.metrics.get_body_done(self.requested.elapsed());
                    return None;
                }
                Ok(None) => StoreError::Transient("body ended early".into()),
                Ok(Some(Err(e))) => e,
                Err(_) => StoreError::Transient(format!("no data for {read_timeout:?}")),
            };
            if !failure.is_transient() || self.resumes_left == 0 {
                self.done = true;
                return Some((Err(failure), self));
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
                Err(e) if e.is_transient() => self.body = Box::pin(futures::stream::once(async { Err(e) })),
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            }
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let s = &self.inner;
        let out = s
            .call("HeadObject", key, || async {
                let r = s.client.head_object().bucket(&s.bucket).key(key).send().await;
                match r {
                    Ok(out) => Ok(out),
                    // The answer to a HEAD has no body to name the error: a bare 400 is
                    // an expired session token as often as anything. A one-byte GET of
                    // the key gets the error's code.
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 400) => Err(s
                        .get_once(key, 0..1, None)
                        .await
                        .err()
                        .unwrap_or_else(|| store_error(&e))),
                    Err(e) => Err(store_error(&e)),
                }
            })
            .await?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().map(str::to_string),
            last_modified: out.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
            metadata: metadata_map(out.metadata()),
        })
    }

    async fn get_range(&self, key: &str, range: Range<u64>, if_match: Option<&str>) -> StoreResult<GetResponse> {
        if range.is_empty() {
            return Ok(GetResponse {
                etag: None,
                object_size: 0,
                body: Box::pin(futures::stream::empty()),
            });
        }
        let s = &self.inner;
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
        let state = BodyState {
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
            body: Box::pin(futures::stream::unfold(state, BodyState::next_chunk)),
        })
    }

    async fn list_page(&self, req: &ListRequest) -> StoreResult<ListPage> {
        let s = &self.inner;
        let out = s
            .call("ListObjectsV2", &req.prefix, || async {
                let r = s
                    .client
                    .list_objects_v2()
                    .bucket(&s.bucket)
                    .prefix(&req.prefix)
                    .set_delimiter(req.delimiter.clone())
                    .set_continuation_token(req.continuation.clone())
                    .set_start_after(req.start_after.clone())
                    .set_max_keys(req.max_keys)
                    // Keys may hold characters XML 1.0 cannot carry (NUL, control
                    // characters): ask for them percent-encoded.
                    .encoding_type(EncodingType::Url)
                    .send()
                    .await
                    .map_err(|e| store_error(&e))?;
                // Runpod sometimes hands back the token it was given ("the same next token
                // was received twice"): a retry after a pause gets the real next page. The
                // retry policy bounds how often.
                let next = r.next_continuation_token();
                if next.is_some() && next == req.continuation.as_deref() {
                    return Err(StoreError::Transient("the same continuation token was returned".into()));
                }
                Ok(r)
            })
            .await?;
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let name = |text: &str| if encoded { url_decode(text) } else { text.to_string() };
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: name(o.key()?),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_string),
                    last_modified: o.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                    metadata: Metadata::new(),
                })
            })
            .collect();
        let prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(name))
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            prefixes,
            next,
        })
    }

    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> StoreResult<String> {
        let s = &self.inner;
        s.check_name(key)?;
        if body.len() as u64 > s.resolved.profile.max_put_size {
            return Err(StoreError::Other(format!(
                "PutObject of {} bytes is over the provider's limit of {}; use a multipart upload",
                body.len(),
                s.resolved.profile.max_put_size
            )));
        }
        s.settings.metrics.sent(body.len() as u64);
        let out = s
            .call("PutObject", key, || async {
                let r = s
                    .client
                    .put_object()
                    .bucket(&s.bucket)
                    .key(key)
                    .body(ByteStream::from(body.clone()))
                    .set_content_type(opts.content_type.clone())
                    .set_metadata(self.metadata_to_send(&opts.metadata))
                    .set_if_none_match(opts.if_none_match.then(|| "*".to_string()))
                    .set_if_match(opts.if_match.clone())
                    .send()
                    .await;
                r.map_err(|e| store_error(&e))
            })
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let s = &self.inner;
        s.check_name(key)?;
        let out = s
            .call("CreateMultipartUpload", key, || async {
                let r = s
                    .client
                    .create_multipart_upload()
                    .bucket(&s.bucket)
                    .key(key)
                    .set_content_type(opts.content_type.clone())
                    .set_metadata(self.metadata_to_send(&opts.metadata))
                    .send()
                    .await;
                r.map_err(|e| store_error(&e))
            })
            .await?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Other("CreateMultipartUpload returned no upload id".into()))
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, body: Bytes) -> StoreResult<CompletedPart> {
        let s = &self.inner;
        s.settings.metrics.sent(body.len() as u64);
        let out = s
            .call("UploadPart", key, || async {
                let r = s
                    .client
                    .upload_part()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.clone()))
                    .send()
                    .await;
                r.map_err(|e| store_error(&e))
            })
            .await?;
        Ok(CompletedPart {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
        })
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        source_etag: Option<&str>,
        range: Range<u64>,
    ) -> StoreResult<CompletedPart> {
        let s = &self.inner;
        if !s.resolved.profile.upload_part_copy {
            return Err(StoreError::Unsupported("UploadPartCopy".into()));
        }
        let out = s
            .call("UploadPartCopy", key, || async {
                let r = s
                    .client
                    .upload_part_copy()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(s.copy_source(source))
                    .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
                    .set_copy_source_if_match(source_etag.map(str::to_string))
                    .send()
                    .await;
                r.map_err(|e| store_error(&e))
            })
            .await?;
        let etag = out.copy_part_result().and_then(|r| r.e_tag()).unwrap_or_default();
        Ok(CompletedPart {
            number,
            etag: etag.to_string(),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        if_match: Option<&str>,
    ) -> StoreResult<String> {
        let s = &self.inner;
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        aws_sdk_s3::types::CompletedPart::builder()
                            .part_number(p.number)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let long = TimeoutConfig::builder()
            .read_timeout(s.settings.complete_timeout)
            .operation_attempt_timeout(s.settings.complete_timeout)
            .build();
        let out = s
            .call("CompleteMultipartUpload", key, || async {
                let r = s
                    .client
                    .complete_multipart_upload()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(upload.clone())
                    .set_if_match(if_match.map(str::to_string))
                    .customize()
                    .config_override(aws_sdk_s3::config::Builder::new().timeout_config(long.clone()))
                    .send()
                    .await;
                r.map_err(|e| store_error(&e))
            })
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let s = &self.inner;
        let r = s
            .call("AbortMultipartUpload", key, || async {
                let r = s
                    .client
                    .abort_multipart_upload()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await;
                r.map_err(|e| store_error(&e))
            })
            .await;
        match r {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn copy(&self, source: &str, dest: &str, metadata: Option<&Metadata>) -> StoreResult<String> {
        let s = &self.inner;
        s.check_name(dest)?;
        let directive = metadata.map(|_| MetadataDirective::Replace);
        let out = s
            .call("CopyObject", dest, || async {
                let r = s
                    .client
                    .copy_object()
                    .bucket(&s.bucket)
                    .key(dest)
                    .copy_source(s.copy_source(source))
                    .set_metadata_directive(directive.clone())
                    .set_metadata(metadata.and_then(|m| self.metadata_to_send(m)))
                    .send()
                    .await;
                r.map_err(|e| store_error(&e))
            })
            .await?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let s = &self.inner;
        let r = s
            .call("DeleteObject", key, || async {
                let r = s.client.delete_object().bucket(&s.bucket).key(key).send().await;
                r.map_err(|e| store_error(&e))
            })
            .await;
        match r {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> StoreResult<()> {
        if !self.inner.resolved.profile.delete_objects {
            let deletes = futures::stream::iter(keys.iter().cloned())
                .map(|k| async move { self.delete(&k).await })
                .buffer_unordered(16);
            let results: Vec<StoreResult<()>> = deletes.collect().await;
            return results.into_iter().collect();
        }
        let s = &self.inner;
        for chunk in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = chunk
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::Other(e.to_string()))?;
            let out = s
                .call("DeleteObjects", &chunk[0], || async {
                    let mut op = s
                        .client
                        .delete_objects()
                        .bucket(&s.bucket)
                        .delete(delete.clone())
                        .customize();
                    if s.resolved.profile.checksums == ChecksumPolicy::WhenRequired {
                        op = op.mutate_request(content_md5_instead_of_checksums);
                    }
                    op.send().await.map_err(|e| store_error(&e))
                })
                .await?;
            if let Some(e) = out.errors().first() {
                return Err(classify(None, e.code(), e.message().unwrap_or("DeleteObjects failed")));
            }
        }
        Ok(())
    }

    async fn rename(&self, source: &str, dest: &str) -> StoreResult<()> {
        let s = &self.inner;
        if !s.resolved.profile.rename_object {
            return Err(StoreError::Unsupported("RenameObject".into()));
        }
        s.check_name(dest)?;
        // One token for every attempt: a retried rename that already happened is a no-op.
        let token = format!("s3vol-{:016x}", fastrand::u64(..));
        s.call("RenameObject", dest, || async {
            let r = s
                .client
                .rename_object()
                .bucket(&s.bucket)
                .key(dest)
                .rename_source(format!("/{}", encode_key(source)))
                .client_token(&token)
                .send()
                .await;
            r.map_err(|e| store_error(&e))
        })
        .await?;
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        let s = &self.inner;
        StoreStats {
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            in_flight: (s.settings.max_requests.max(1) - s.slots.available_permits()) as u64,
        }
    }
}

impl S3Store {
    /// User metadata goes only to providers that keep it.
    fn metadata_to_send(&self, m: &Metadata) -> Option<std::collections::HashMap<String, String>> {
        if self.inner.resolved.profile.user_metadata {
            hash_map(m)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_for_copy_sources() {
        assert_eq!(encode_key("a b/#%+é"), "a%20b/%23%25%2B%C3%A9");
    }

    #[test]
    fn delete_objects_checksum_headers_become_content_md5() {
        let mut req = aws_sdk_s3::config::http::HttpRequest::new(aws_smithy_types::body::SdkBody::from("hello"));
        req.headers_mut().insert("x-amz-checksum-crc32", "NhCmhg==");
        req.headers_mut().insert("x-amz-sdk-checksum-algorithm", "CRC32");
        req.headers_mut().insert("content-type", "application/xml");
        content_md5_instead_of_checksums(&mut req);
        let names: Vec<&str> = req.headers().iter().map(|(name, _)| name).collect();
        assert!(!names.iter().any(|n| n.contains("checksum")), "{names:?}");
        assert_eq!(req.headers().get("content-md5"), Some("XUFAKrxLKna5cZ2REBfFkg=="));
        assert_eq!(req.headers().get("content-type"), Some("application/xml"));
    }

    #[test]
    fn url_encoded_listing_keys() {
        assert_eq!(url_decode("a%20b+c%2Bd%00e/%C3%A9"), "a b c+d\0e/é");
        assert_eq!(url_decode("100%"), "100%");
    }

    #[test]
    fn content_range_total() {
        assert_eq!(total_from_content_range("bytes 0-99/1000"), Some(1000));
        assert_eq!(total_from_content_range("bytes */0"), Some(0));
    }
}
