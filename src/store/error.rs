use std::fmt;

/// What went wrong with a remote call, in the few kinds the filesystem distinguishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound,
    AccessDenied(String),
    /// The server does not know the access key, or the signature does not match its
    /// secret (`InvalidAccessKeyId`, `SignatureDoesNotMatch`): often a rotated key.
    CredentialsRejected(String),
    /// The session token has expired (`ExpiredToken`); the message says what to refresh.
    CredentialsExpired(String),
    /// The volume is full (Runpod's fixed-size network volumes).
    NoSpace(String),
    /// The object changed (If-Match / If-None-Match failed, or the ETag differs).
    PreconditionFailed,
    /// A key the provider refuses.
    InvalidName(String),
    /// The provider does not offer the operation.
    Unsupported(String),
    /// Worth retrying: 5xx, throttling, connection errors, timeouts.
    Transient(String),
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The error's kind, as the metrics label its requests' outcome.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound => "not_found",
            StoreError::AccessDenied(_) => "access_denied",
            StoreError::CredentialsRejected(_) => "credentials_rejected",
            StoreError::CredentialsExpired(_) => "credentials_expired",
            StoreError::NoSpace(_) => "no_space",
            StoreError::PreconditionFailed => "precondition_failed",
            StoreError::InvalidName(_) => "invalid_name",
            StoreError::Unsupported(_) => "unsupported",
            StoreError::Transient(_) => "transient",
            StoreError::Other(_) => "other",
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }

    /// Could new credentials cure this? A HEAD's refusal carries no error code, so a
    /// plain 403 counts too.
    pub fn may_be_stale_credentials(&self) -> bool {
        matches!(
            self,
            StoreError::AccessDenied(_) | StoreError::CredentialsRejected(_) | StoreError::CredentialsExpired(_)
        )
    }

    /// The errno the filesystem reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound => libc::ENOENT,
            StoreError::AccessDenied(_) | StoreError::CredentialsRejected(_) | StoreError::CredentialsExpired(_) => {
                libc::EACCES
            }
            StoreError::NoSpace(_) => libc::ENOSPC,
            StoreError::PreconditionFailed => libc::ESTALE,
            StoreError::InvalidName(_) => libc::EINVAL,
            StoreError::Unsupported(_) => libc::ENOTSUP,
            StoreError::Transient(_) | StoreError::Other(_) => libc::EIO,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound => f.write_str("not found"),
            StoreError::AccessDenied(m) | StoreError::CredentialsRejected(m) => write!(f, "access denied: {m}"),
            StoreError::CredentialsExpired(m) => write!(f, "credentials expired: {m}"),
            StoreError::NoSpace(m) => write!(f, "no space left on the volume: {m}"),
            StoreError::PreconditionFailed => f.write_str("the object changed remotely"),
            StoreError::InvalidName(m) => write!(f, "name refused by the provider: {m}"),
            StoreError::Unsupported(m) => write!(f, "not supported by the provider: {m}"),
            StoreError::Transient(m) => write!(f, "temporary failure: {m}"),
            StoreError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

/// How a NoSuchBucket error starts; the store replaces it with one naming the bucket.
pub(super) const NO_SUCH_BUCKET: &str = "no such bucket";

/// The whole `source()` chain: top-level messages alone (the SDK's "dispatch failure",
/// hyper's "client error (Connect)") do not say what failed (connection refused, DNS, TLS...).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A request that got no answer, `detail` its whole chain of causes: worth retrying, but
/// for a TLS certificate this client refuses, which no retry cures and whose cure is ours.
pub fn connection_failure(detail: String) -> StoreError {
    const REFUSED: &str = "invalid peer certificate: ";
    match detail.find(REFUSED) {
        Some(at) => {
            let cause = detail[at + REFUSED.len()..]
                .split(':')
                .next()
                .unwrap_or_default()
                .trim();
            StoreError::Other(format!(
                "the server's TLS certificate is not trusted ({cause}); for a server whose \
                 certificate a private CA signed, give that CA's certificate with --ca-bundle FILE \
                 (or AWS_CA_BUNDLE)"
            ))
        }
        None => StoreError::Transient(detail),
    }
}

/// What to say when an answer is a web page, not S3 (a wrong `--endpoint-url`, a captive
/// portal). Some servers label empty or XML error bodies text/html (moto's 404 to a HEAD):
/// the body decides.
pub fn web_page_answer(status: u16, content_type: &str, body: &[u8]) -> Option<String> {
    let start = String::from_utf8_lossy(&body[..body.len().min(64)])
        .trim_start()
        .to_ascii_lowercase();
    let html_body = start.starts_with("<!doctype html") || start.starts_with("<html");
    let labelled_html = content_type.to_ascii_lowercase().starts_with("text/html")
        && !start.is_empty()
        && !start.starts_with("<?xml")
        && !start.starts_with("<error");
    (html_body || labelled_html).then(|| {
        format!("the endpoint answered with an HTML page (HTTP {status}), not an S3 response: is --endpoint-url right?")
    })
}

/// Classifies an S3 error by HTTP status and error code.
pub fn classify(status: Option<u16>, code: Option<&str>, message: &str) -> StoreError {
    let msg = || match code {
        Some(c) if message.is_empty() => c.to_string(),
        Some(c) => format!("{c}: {message}"),
        None => message.to_string(),
    };
    match code {
        Some("NoSuchKey" | "NotFound" | "NoSuchUpload") => return StoreError::NotFound,
        Some("NoSuchBucket") => return StoreError::Other(format!("{NO_SUCH_BUCKET}: {message}")),
        Some("InsufficientStorage" | "QuotaExceeded" | "VolumeFull" | "NoSpaceLeft") => {
            return StoreError::NoSpace(msg());
        }
        Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout")
        | Some("InternalError" | "ServiceUnavailable" | "ConditionalRequestConflict" | "OperationAborted") => {
            return StoreError::Transient(msg());
        }
        Some("AccessDenied") => return StoreError::AccessDenied(msg()),
        Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "InvalidClientTokenId") => {
            return StoreError::CredentialsRejected(msg());
        }
        Some("ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired") => {
            return StoreError::CredentialsExpired(msg());
        }
        Some("RequestTimeTooSkewed") => {
            return StoreError::AccessDenied(format!(
                "{}; the local clock differs too much from the server's (check NTP)",
                msg()
            ));
        }
        Some("NotImplemented") => return StoreError::Unsupported(msg()),
        Some("InvalidObjectName" | "KeyTooLongError") => return StoreError::InvalidName(msg()),
        Some("PreconditionFailed") => return StoreError::PreconditionFailed,
        _ => {}
    }
    match status {
        Some(404) => StoreError::NotFound,
        Some(401 | 403) => StoreError::AccessDenied(msg()),
        Some(412) => StoreError::PreconditionFailed,
        Some(429) => StoreError::Transient(msg()),
        Some(501) => StoreError::Unsupported(msg()),
        Some(507) => StoreError::NoSpace(msg()),
        Some(s) if s >= 500 => StoreError::Transient(msg()),
        _ => StoreError::Other(msg()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_certificate_is_final_and_says_how_to_trust_it() {
        let detail = "dispatch failure: io error: client error (Connect): TLS handshake failed: \
                      invalid peer certificate: UnknownIssuer";
        match connection_failure(detail.into()) {
            StoreError::Other(m) => {
                assert!(
                    m.contains("not trusted (UnknownIssuer)") && m.contains("--ca-bundle"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let refused = "connection refused (os error 111)".to_string();
        assert_eq!(connection_failure(refused.clone()), StoreError::Transient(refused));
    }

    #[test]
    fn credential_errors_are_told_apart_and_all_eacces() {
        let expired = classify(Some(400), Some("ExpiredToken"), "The provided token has expired.");
        assert_eq!(
            expired,
            StoreError::CredentialsExpired("ExpiredToken: The provided token has expired.".into())
        );
        assert!(expired.to_string().starts_with("credentials expired: ExpiredToken"));
        let rejected = classify(Some(403), Some("InvalidAccessKeyId"), "unknown key");
        assert!(matches!(rejected, StoreError::CredentialsRejected(_)));
        let denied = classify(Some(403), Some("AccessDenied"), "policy");
        for e in [&expired, &rejected, &denied] {
            assert_eq!(e.errno(), libc::EACCES);
            assert!(e.may_be_stale_credentials() && !e.is_transient());
        }
        assert!(!classify(Some(404), None, "").may_be_stale_credentials());
    }
}
