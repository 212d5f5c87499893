//! The credentials that `signed_reads.rs` signs with: the SDK's provider chain (environment,
//! profile, SSO, a role, `--credentials-file`), asked again only when what it gave is near
//! its expiry, as the SDK's own identity cache does.

use super::sdk_error::{credentials_refusal, error_chain};
use crate::store::{StoreError, StoreResult};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

/// Credentials this close to their expiry are asked for again.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// Longest wait for the provider (the SDK's identity cache allows 5 s; a credential
/// process or an SSO portal may be slower).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct SigningIdentity {
    provider: SharedCredentialsProvider,
    /// `None` for a provider asked every time: `--credentials-file` is re-read cheaply and
    /// carries no expiry, so a rotation is seen at the next request.
    cached: Option<Mutex<Option<Credentials>>>,
    /// One refresh at a time: the others wait for it instead of asking too.
    refreshing: tokio::sync::Mutex<()>,
}

impl SigningIdentity {
    pub(super) fn new(provider: SharedCredentialsProvider, cache: bool) -> SigningIdentity {
        SigningIdentity {
            provider,
            cached: cache.then(|| Mutex::new(None)),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) async fn current(&self) -> StoreResult<Credentials> {
        let Some(cached) = &self.cached else {
            return self.ask().await;
        };
        if let Some(c) = fresh(&cached.lock()) {
            return Ok(c);
        }
        let _one = self.refreshing.lock().await;
        if let Some(c) = fresh(&cached.lock()) {
            return Ok(c);
        }
        let c = self.ask().await?;
        *cached.lock() = Some(c.clone());
        Ok(c)
    }

    async fn ask(&self) -> StoreResult<Credentials> {
        match tokio::time::timeout(ASK_TIMEOUT, self.provider.provide_credentials()).await {
            Ok(answer) => answer.map_err(|e| credentials_refusal(&error_chain(&e))),
            Err(_) => Err(StoreError::Transient(format!(
                "the credentials provider gave no answer in {ASK_TIMEOUT:?}"
            ))),
        }
    }
}

fn fresh(cached: &Option<Credentials>) -> Option<Credentials> {
    let c = cached.as_ref()?;
    match c.expiry() {
        Some(expiry) if expiry <= SystemTime::now() + RENEW_BEFORE_EXPIRY => None,
        _ => Some(c.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Counting {
        asked: Arc<AtomicU32>,
        lifetime: Option<Duration>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.asked.fetch_add(1, Ordering::SeqCst);
            let expiry = self.lifetime.map(|l| SystemTime::now() + l);
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                format!("AK{n}"),
                "SK",
                None,
                expiry,
                "test",
            )))
        }
    }

    fn identity(lifetime: Option<Duration>, cache: bool) -> (SigningIdentity, Arc<AtomicU32>) {
        let asked = Arc::new(AtomicU32::new(0));
        let provider = SharedCredentialsProvider::new(Counting {
            asked: asked.clone(),
            lifetime,
        });
        (SigningIdentity::new(provider, cache), asked)
    }

    #[tokio::test]
    async fn credentials_are_asked_for_once_while_far_from_expiry() {
        let (id, asked) = identity(Some(Duration::from_secs(3600)), true);
        for _ in 0..5 {
            assert_eq!(id.current().await.unwrap().access_key_id(), "AK0");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        let (id, asked) = identity(None, true);
        id.current().await.unwrap();
        id.current().await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn credentials_near_their_expiry_are_asked_for_again() {
        let (id, asked) = identity(Some(Duration::from_secs(60)), true);
        assert_eq!(id.current().await.unwrap().access_key_id(), "AK0");
        assert_eq!(id.current().await.unwrap().access_key_id(), "AK1");
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[derive(Debug)]
    struct Silent;

    impl ProvideCredentials for Silent {
        fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            aws_credential_types::provider::future::ProvideCredentials::new(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_never_answers_is_a_transient_error_in_bounded_time() {
        let id = SigningIdentity::new(SharedCredentialsProvider::new(Silent), true);
        let e = id.current().await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Transient(m) if m.contains("no answer")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn an_uncached_provider_is_asked_every_time() {
        let (id, asked) = identity(None, false);
        id.current().await.unwrap();
        id.current().await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }
}
