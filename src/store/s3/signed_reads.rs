//! GetObject and HeadObject sent on hyper itself and signed with SigV4 here. On a fast
//! link a small file's read costs what its request costs in CPU, and the SDK's
//! orchestrator (its interceptors, config bag and endpoint rules, run for every call) was
//! a fifth of the daemon's CPU in a small-file epoch. The endpoint is resolved once by the
//! SDK's own rules; a bucket whose endpoint wants another signature (SigV4a, S3 Express)
//! keeps the SDK's. Every other request stays with the SDK.

use super::signing_identity::SigningIdentity;
use super::sigv4::SigV4;
use super::wire::encode_key;
use crate::store::error::classify;
use crate::store::http_get::{HttpGets, header, object_described, ranged_answer, refusal};
use crate::store::{GetResponse, ObjectMeta, StoreError, StoreResult};
use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_smithy_types::Document;
use aws_smithy_types::endpoint::EndpointAuthScheme;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http_body_util::Empty;
use std::ops::Range;
use std::time::{Duration, SystemTime};

/// Keys listed by each warm-up request: about 4 KB of answer.
const WARM_UP_KEYS: u32 = 16;

pub(super) struct SignedReads {
    /// The bucket's URL without a trailing slash (`https://bucket.host`, `http://host/bucket`).
    base: String,
    signer: SigV4,
    identity: SigningIdentity,
    user_agent: String,
}

/// What one signed HEAD came to.
pub(super) enum HeadAnswer {
    Found(ObjectMeta),
    /// A bare 400: a HEAD's answer has no body to name the error.
    BadRequest,
}

/// What one signed GET came to.
pub(super) enum SignedAnswer {
    Got(GetResponse),
    /// Redirected to this Location (Hugging Face's CDN).
    Redirected(String),
}

/// Where the bucket is and how it is signed for.
pub(super) struct BucketEndpoint<'a> {
    pub bucket: &'a str,
    pub region: &'a str,
    pub endpoint: Option<&'a str>,
    pub path_style: bool,
    pub use_fips: bool,
    pub use_dual_stack: bool,
}

impl SignedReads {
    /// `None` where the SDK must sign this bucket's GETs and HEADs (an auth scheme other
    /// than SigV4) or cannot resolve its endpoint: the SDK's then say why, request by request.
    pub(super) async fn new(at: BucketEndpoint<'_>, identity: SigningIdentity) -> Option<SignedReads> {
        let params = Params::builder()
            .bucket(at.bucket)
            .region(at.region)
            .set_endpoint(at.endpoint.map(str::to_string))
            .force_path_style(at.path_style)
            .use_fips(at.use_fips)
            .use_dual_stack(at.use_dual_stack)
            .build()
            .ok()?;
        let endpoint = match DefaultResolver::new().resolve_endpoint(&params).await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("bucket endpoint not resolved ({e}): GETs and HEADs go through the SDK");
                return None;
            }
        };
        if endpoint.headers().next().is_some() {
            tracing::debug!("the bucket's endpoint wants headers of its own: GETs and HEADs go through the SDK");
            return None;
        }
        let (region, service) = sigv4_scope(endpoint.auth_schemes(), at.region)?;
        Some(SignedReads {
            base: endpoint.url().trim_end_matches('/').to_string(),
            signer: SigV4::new(&region, &service),
            identity,
            user_agent: format!("s3vol/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    pub(super) async fn get(
        &self,
        http: &HttpGets,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
        condition: Option<&str>,
        timeout: Duration,
    ) -> StoreResult<SignedAnswer> {
        let what = "GetObject";
        let request = self.signed_get(key, &range, condition, SystemTime::now()).await?;
        let answer = http.send(request, what, timeout).await?;
        let status = answer.status;
        if matches!(status, 301 | 302 | 303 | 307 | 308)
            && let Some(location) = answer.headers.get(http::header::LOCATION)
            && let Ok(location) = location.to_str()
        {
            return Ok(SignedAnswer::Redirected(location.to_string()));
        }
        if !(200..300).contains(&status) && status != 416 {
            return Err(refusal(answer, what, timeout).await);
        }
        ranged_answer(answer, range, if_match, Some(key)).map(SignedAnswer::Got)
    }

    pub(super) async fn head(&self, http: &HttpGets, key: &str, timeout: Duration) -> StoreResult<HeadAnswer> {
        let what = "HeadObject";
        let uri = format!("{}/{}", self.base, encode_key(key));
        let request = self.signed("HEAD", uri, Vec::new(), SystemTime::now()).await?;
        let answer = http.send(request, what, timeout).await?;
        let headers = &answer.headers;
        match answer.status {
            200..=299 => {
                let size = header(headers, CONTENT_LENGTH)
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                Ok(HeadAnswer::Found(object_described(key, size, headers)))
            }
            400 => Ok(HeadAnswer::BadRequest),
            status => Err(classify(Some(status), None, &format!("{what} answered HTTP {status}"))),
        }
    }

    /// Opens one of the GETs' connections (see `warm_up`) with a listing of a few keys,
    /// answer read and ignored. A listing rather than a HeadBucket: its answer of a few
    /// packets grows the server's congestion window past the 10 packets (14 KB) a fresh
    /// connection starts with, so that a first read of 16 KiB (the kernel's first
    /// readahead of a file) arrives in one round trip, not two, as it does on a
    /// connection that TLS's handshake or an earlier answer has grown. The original
    /// ListObjects (v1): every S3-compatible store answers it, and in a server's request
    /// counts it stands apart from the filesystem's own listings (ListObjectsV2).
    pub(super) async fn open_connection(&self, http: &HttpGets, timeout: Duration) {
        let uri = format!("{}/?max-keys={WARM_UP_KEYS}", self.base);
        if let Ok(request) = self.signed("GET", uri, Vec::new(), SystemTime::now()).await
            && let Ok(mut answer) = http.send(request, "ListObjects", timeout).await
        {
            let read = async { while let Some(Ok(_)) = answer.body.next_here().await {} };
            let _ = tokio::time::timeout(timeout, read).await;
        }
    }

    async fn signed_get(
        &self,
        key: &str,
        range: &Range<u64>,
        condition: Option<&str>,
        now: SystemTime,
    ) -> StoreResult<http::Request<Empty<Bytes>>> {
        let uri = format!("{}/{}", self.base, encode_key(key));
        let range = format!("bytes={}-{}", range.start, range.end - 1);
        let mut headers = vec![("range", range.as_str())];
        if let Some(etag) = condition {
            headers.push(("if-match", etag));
        }
        self.signed("GET", uri, headers, now).await
    }

    /// `method uri` with `headers`, signed. A URI a key cannot make is the key's name's
    /// fault (EINVAL); a failure to get credentials is said as such.
    async fn signed(
        &self,
        method: &str,
        uri: String,
        headers: Vec<(&str, &str)>,
        now: SystemTime,
    ) -> StoreResult<http::Request<Empty<Bytes>>> {
        let credentials = self.identity.current().await?;
        let parsed: http::Uri = uri
            .parse()
            .map_err(|e| StoreError::InvalidName(format!("{uri} is no URL: {e}")))?;
        let signing = self.signer.sign(method, &parsed, &headers, &credentials, now);
        let mut request = http::Request::builder().method(method).uri(parsed);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        for (name, value) in signing {
            let mut value = http::HeaderValue::try_from(value)
                .map_err(|e| StoreError::Other(format!("signing a {method}: {e}")))?;
            // Kept out of debug output, as the SDK does.
            value.set_sensitive(matches!(name, "authorization" | "x-amz-security-token"));
            request = request.header(name, value);
        }
        request
            .header(http::header::USER_AGENT, &self.user_agent)
            .body(Empty::new())
            .map_err(|e| StoreError::InvalidName(format!("{method} {uri}: {e}")))
    }
}

/// The SigV4 signing region and name of the endpoint's first auth scheme; `None` if it is
/// another scheme. An endpoint that names none is signed as S3 in the bucket's region.
fn sigv4_scope(schemes: &[EndpointAuthScheme], region: &str) -> Option<(String, String)> {
    let Some(first) = schemes.first() else {
        return Some((region.to_string(), "s3".to_string()));
    };
    if first.name() != "sigv4" {
        tracing::debug!(
            "the bucket's endpoint is signed with {}: GETs and HEADs go through the SDK",
            first.name()
        );
        return None;
    }
    let text = |name: &str| match first.get(name) {
        Some(Document::String(s)) => Some(s.clone()),
        _ => None,
    };
    Some((
        text("signingRegion").unwrap_or_else(|| region.to_string()),
        text("signingName").unwrap_or_else(|| "s3".to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;

    async fn gets(endpoint: Option<&str>, path_style: bool, bucket: &str) -> Option<SignedReads> {
        let creds = Credentials::new("AKID", "SECRET", Some("TOKEN".into()), None, "test");
        let identity = SigningIdentity::new(SharedCredentialsProvider::new(creds), true);
        let at = BucketEndpoint {
            bucket,
            region: "us-east-1",
            endpoint,
            path_style,
            use_fips: false,
            use_dual_stack: false,
        };
        SignedReads::new(at, identity).await
    }

    #[tokio::test]
    async fn a_custom_endpoint_is_addressed_by_path_or_by_host() {
        let g = gets(Some("http://127.0.0.1:9000"), true, "vol").await.unwrap();
        assert_eq!(g.base, "http://127.0.0.1:9000/vol");
        let g = gets(Some("https://storage.example.com"), false, "vol").await.unwrap();
        assert_eq!(g.base, "https://vol.storage.example.com");
        let g = gets(None, false, "vol").await.unwrap();
        assert_eq!(g.base, "https://vol.s3.us-east-1.amazonaws.com");
        assert_eq!(
            (g.signer.region.as_str(), g.signer.service.as_str()),
            ("us-east-1", "s3")
        );
    }

    #[tokio::test]
    async fn a_bucket_signed_otherwise_keeps_the_sdks_get() {
        // A directory bucket (S3 Express) is signed with its own session scheme.
        assert!(gets(None, false, "data--use1-az4--x-s3").await.is_none());
    }

    #[tokio::test]
    async fn a_get_is_signed_with_its_range_and_condition() {
        let g = gets(Some("http://127.0.0.1:9000"), true, "vol").await.unwrap();
        let r = g
            .signed_get("a b/é+.txt", &(0..10), Some("\"e1\""), SystemTime::now())
            .await
            .unwrap();
        assert_eq!(r.uri().path(), "/vol/a%20b/%C3%A9%2B.txt");
        let h = r.headers();
        assert_eq!(h["range"], "bytes=0-9");
        assert_eq!(h["x-amz-security-token"], "TOKEN");
        assert!(h.contains_key("x-amz-date") && h.contains_key("x-amz-content-sha256"));
        let auth = h["authorization"].to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/"), "{auth}");
        assert!(auth.contains("/us-east-1/s3/aws4_request"), "{auth}");
        assert!(auth.contains("if-match;range;"), "{auth}");
    }
}
