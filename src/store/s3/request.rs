//! The discipline of every request: a slot among `--max-requests`, the retry policy,
//! one more try with rotated credentials, and each outcome counted and logged.

use super::Inner;
use super::sdk_error::store_error;
use super::wire::encode_key;
use crate::store::error::NO_SUCH_BUCKET;
use crate::store::{StoreError, StoreResult};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

impl Inner {
    pub(super) async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the request semaphore is never closed")
    }

    /// One request under a slot, retried by the policy.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, key: &str, op: F) -> StoreResult<T>
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

    /// `call` for one SDK request whose errors need no reading of their own: most of them.
    pub(super) async fn send<T, E, F, Fut>(&self, what: &str, key: &str, request: F) -> StoreResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.call(what, key, || async { request().await.map_err(|e| store_error(&e)) })
            .await
    }

    /// Runs `attempts`; when the server refused the credentials and the credentials file
    /// now holds others (a rotated key or session token), runs it once more with those.
    pub(super) async fn with_fresh_credentials<T, F, Fut>(&self, what: &str, attempts: F) -> StoreResult<T>
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
    pub(super) fn count_retry(&self, what: &str, attempts: &AtomicU64) {
        if attempts.fetch_add(1, Ordering::Relaxed) > 0 {
            self.settings.metrics.s3_retry(what);
        }
    }

    /// Counts one request and logs it at debug level (`--debug`): operation, key, outcome
    /// and time to the answer (for a GET, to its response headers).
    pub(super) fn counted<T>(&self, what: &str, key: &str, started: Instant, result: StoreResult<T>) -> StoreResult<T> {
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

    pub(super) fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket, encode_key(key))
    }
}
