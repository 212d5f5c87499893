//! The one key pair (and optional session token) the server accepts, replaceable while it
//! runs, so tests and demos can rotate credentials under a live mount: requests signed
//! with the old key get `InvalidAccessKeyId`, with an old session token `ExpiredToken`.

use std::sync::Mutex;

use http::{HeaderMap, Response, StatusCode};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};

use super::body::{ResponseBody, s3_error_response};
use super::lock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub access_key: String,
    pub secret_key: String,
    /// When set, requests must carry this `x-amz-security-token`.
    pub session_token: Option<String>,
}

/// A shared handle: [`RunningServer::keys`](super::RunningServer::keys).
#[derive(Debug)]
pub struct AcceptedKeys {
    current: Mutex<KeyPair>,
}

impl AcceptedKeys {
    pub(crate) fn new(first: KeyPair) -> AcceptedKeys {
        AcceptedKeys {
            current: Mutex::new(first),
        }
    }

    pub fn current(&self) -> KeyPair {
        lock(&self.current).clone()
    }

    /// From now on only `next` is accepted.
    pub fn rotate(&self, next: KeyPair) {
        *lock(&self.current) = next;
    }

    /// A request whose session token is not the current one, answered as AWS answers a
    /// token past its expiry. Decided before s3s checks the signature (which does not
    /// cover tokens); the header is signed, so it cannot be forged into a pass.
    pub(crate) fn token_refusal(&self, headers: &HeaderMap) -> Option<Response<ResponseBody>> {
        let wanted = lock(&self.current).session_token.clone()?;
        let sent = headers.get("x-amz-security-token").and_then(|v| v.to_str().ok());
        (sent != Some(wanted.as_str())).then(|| {
            s3_error_response(
                StatusCode::BAD_REQUEST,
                "ExpiredToken",
                "The provided token has expired.",
            )
        })
    }
}

/// SigV4 credentials check against the current key pair. Unlike s3s's `SimpleAuth`
/// (which answers `NotSignedUp`), an unknown key gets AWS's `InvalidAccessKeyId`.
pub(crate) struct CurrentKeyAuth(pub(crate) std::sync::Arc<AcceptedKeys>);

#[async_trait::async_trait]
impl S3Auth for CurrentKeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let current = self.0.current();
        if access_key == current.access_key {
            return Ok(current.secret_key.into());
        }
        Err(s3_error!(
            InvalidAccessKeyId,
            "The AWS Access Key Id you provided does not exist in our records."
        ))
    }
}
