//! The object store over S3, with aws-sdk-s3: client built from the provider profile,
//! our own retries and timeouts, a bound on concurrent requests, resumable GET bodies and
//! GET redirects followed without credentials. GetObject and HeadObject go on hyper,
//! signed by us (signed_reads.rs), where the bucket is signed with plain SigV4.

mod get;
mod request;
mod sdk_error;
mod signed_reads;
mod signing_identity;
mod sigv4;
mod wire;

use super::error::classify;
use super::gate::Gated;
use super::http_get::HttpGets;
use super::*;
use crate::credentials::{CredentialsFile, StaticCredentials};
use crate::metrics::Metrics;
use crate::provider::{Addressing, ChecksumPolicy, Resolved};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, Delete, EncodingType, MetadataDirective, ObjectIdentifier};
pub(in crate::store) use get::{ResumingBody, total_from_content_range};
use sdk_error::store_error;
use signed_reads::{BucketEndpoint, HeadAnswer, SignedReads};
use signing_identity::SigningIdentity;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use wire::{content_md5_instead_of_checksums, encode_key, hash_map, metadata_map, url_decode};

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
    /// GETs and HEADs sent through the SDK as every other request, not signed by us
    /// (signed_reads.rs): a plain aws-sdk client, the benchmarks' raw baseline.
    pub sdk_reads: bool,
    /// `--ca-bundle`: roots trusted beside the system's.
    pub ca_bundle: Option<CaBundle>,
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
            sdk_reads: false,
            ca_bundle: None,
        }
    }
}

/// The store over S3 as the provider lets it be used (see `gate.rs`).
pub type S3Store = Gated<S3Client>;

/// S3 requests as they are sent: what the provider allows is `Gated`'s business.
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// GetObject on hyper, signed by us; `None` where the SDK must sign it.
    signed_reads: Option<SignedReads>,
    /// The signed GETs' connections, and a redirect's Location fetched without credentials.
    http: HttpGets,
    /// The provider answers GETs with a redirect to a CDN that is to be followed.
    follow_redirects: bool,
    bucket: String,
    resolved: Resolved,
    /// `Resolved::unsigned_uploads` for the endpoint the SDK sends to.
    unsigned_uploads: bool,
    settings: S3Settings,
    slots: Arc<Semaphore>,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl S3Store {
    pub async fn connect(resolved: &Resolved, settings: S3Settings) -> Result<S3Store, String> {
        let client = S3Client::connect(resolved, settings).await?;
        Ok(Gated::new(client, resolved.clone()))
    }

    /// Opens `connections` connections to the endpoint for the SDK's requests and as many
    /// for the GETs, with as many concurrent HeadBucket requests, answers ignored. The
    /// first lookup after a mount sends a LIST and a HEAD at once, then a GET: on a link
    /// 40 ms long, each one that must open its own connection first pays a round trip
    /// (two with TLS) more.
    pub async fn warm_up(&self, connections: usize) {
        let s = &self.inner().inner;
        let timeout = s.settings.connect_timeout * 2;
        let sdk = (0..connections).map(|_| async {
            let _ = tokio::time::timeout(timeout, s.client.head_bucket().bucket(&s.bucket).send()).await;
        });
        // The GETs go on connections of their own (signed_reads.rs): as many again.
        let gets = (0..connections).map(|_| async {
            if let Some(signed) = &s.signed_reads {
                signed.open_connection(&s.http, timeout).await;
            }
        });
        futures::future::join(futures::future::join_all(sdk), futures::future::join_all(gets)).await;
    }
}

impl S3Client {
    async fn connect(resolved: &Resolved, settings: S3Settings) -> Result<S3Client, String> {
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
        if let Some(bundle) = &settings.ca_bundle {
            loader = loader.http_client(bundle.sdk_http_client()?);
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
        let region = sdk.region().map_or_else(|| "us-east-1".to_string(), |r| r.to_string());
        let signed_reads = match sdk.credentials_provider().filter(|_| !settings.sdk_reads) {
            Some(provider) => {
                let at = BucketEndpoint {
                    bucket: &resolved.bucket,
                    region: &region,
                    endpoint: resolved.endpoint.as_deref(),
                    path_style: resolved.profile.addressing == Addressing::Path,
                    use_fips: sdk.use_fips().unwrap_or(false),
                    use_dual_stack: sdk.use_dual_stack().unwrap_or(false),
                };
                // The SDK keeps no file credentials either (above): a rotation is seen at once.
                let identity = SigningIdentity::new(provider, settings.credentials_file.is_none());
                SignedReads::new(at, identity).await
            }
            None => None,
        };
        Ok(S3Client {
            inner: Arc::new(Inner {
                client: Client::from_conf(config.build()),
                signed_reads,
                http: HttpGets::new(
                    settings.connect_timeout,
                    settings.max_requests.max(1),
                    settings.ca_bundle.as_ref(),
                )?,
                follow_redirects: resolved.profile.get_redirects,
                bucket: resolved.bucket.clone(),
                // An endpoint may also come from AWS_ENDPOINT_URL or the AWS profile.
                unsigned_uploads: resolved.unsigned_uploads(resolved.endpoint.as_deref().or(sdk.endpoint_url())),
                resolved: resolved.clone(),
                slots: Arc::new(Semaphore::new(settings.max_requests.max(1))),
                settings,
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        })
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

#[async_trait]
impl ObjectStore for S3Client {
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let s = &self.inner;
        if let Some(signed) = &s.signed_reads {
            let timeout = s.settings.read_timeout.min(s.settings.operation_timeout);
            return s
                .call("HeadObject", key, || async {
                    match signed.head(&s.http, key, timeout).await? {
                        HeadAnswer::Found(meta) => Ok(meta),
                        // See below: a one-byte GET names the error.
                        HeadAnswer::BadRequest => Err(s.get_once(key, 0..1, None).await.err().unwrap_or_else(|| {
                            StoreError::Other("HeadObject answered HTTP 400, a GET of the key did not".into())
                        })),
                    }
                })
                .await;
        }
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
        self.inner.get_range(key, range, if_match).await
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
        s.settings.metrics.sent(body.len() as u64);
        let out = s
            .send("PutObject", key, || {
                let op = s
                    .client
                    .put_object()
                    .bucket(&s.bucket)
                    .key(key)
                    .body(ByteStream::from(body.clone()))
                    .set_content_type(opts.content_type.clone())
                    .set_metadata(hash_map(&opts.metadata))
                    .set_if_none_match(opts.if_none_match.then(|| "*".to_string()))
                    .set_if_match(opts.if_match.clone())
                    .customize();
                match s.unsigned_uploads {
                    true => op.disable_payload_signing().send(),
                    false => op.send(),
                }
            })
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> StoreResult<String> {
        let s = &self.inner;
        let out = s
            .send("CreateMultipartUpload", key, || {
                s.client
                    .create_multipart_upload()
                    .bucket(&s.bucket)
                    .key(key)
                    .set_content_type(opts.content_type.clone())
                    .set_metadata(hash_map(&opts.metadata))
                    .send()
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
            .send("UploadPart", key, || {
                let op = s
                    .client
                    .upload_part()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.clone()))
                    .customize();
                match s.unsigned_uploads {
                    true => op.disable_payload_signing().send(),
                    false => op.send(),
                }
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
        let out = s
            .send("UploadPartCopy", key, || {
                s.client
                    .upload_part_copy()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(s.copy_source(source))
                    .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
                    .set_copy_source_if_match(source_etag.map(str::to_string))
                    .send()
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
            .send("CompleteMultipartUpload", key, || {
                s.client
                    .complete_multipart_upload()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(upload.clone())
                    .set_if_match(if_match.map(str::to_string))
                    .customize()
                    .config_override(aws_sdk_s3::config::Builder::new().timeout_config(long.clone()))
                    .send()
            })
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let s = &self.inner;
        let r = s
            .send("AbortMultipartUpload", key, || {
                s.client
                    .abort_multipart_upload()
                    .bucket(&s.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
            })
            .await;
        match r {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn copy(&self, source: &str, dest: &str, metadata: Option<&Metadata>) -> StoreResult<String> {
        let s = &self.inner;
        let directive = metadata.map(|_| MetadataDirective::Replace);
        let out = s
            .send("CopyObject", dest, || {
                s.client
                    .copy_object()
                    .bucket(&s.bucket)
                    .key(dest)
                    .copy_source(s.copy_source(source))
                    .set_metadata_directive(directive.clone())
                    .set_metadata(metadata.and_then(hash_map))
                    .send()
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
            .send("DeleteObject", key, || {
                s.client.delete_object().bucket(&s.bucket).key(key).send()
            })
            .await;
        match r {
            Ok(_) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> StoreResult<()> {
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
        // One token for every attempt: a retried rename that already happened is a no-op.
        let token = format!("s3vol-{:016x}", fastrand::u64(..));
        s.send("RenameObject", dest, || {
            s.client
                .rename_object()
                .bucket(&s.bucket)
                .key(dest)
                .rename_source(format!("/{}", encode_key(source)))
                .client_token(&token)
                .send()
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
