//! An SDK error as one of our error kinds, with what the SDK's own message leaves out:
//! which endpoint answered with a web page, the whole chain of causes, where credentials
//! were looked for.

use crate::store::StoreError;
pub(super) use crate::store::error::error_chain;
use crate::store::error::{classify, connection_failure, web_page_answer};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Turns an SDK error into our error kinds, by HTTP status and S3 error code.
const NO_CREDENTIALS: &str = "no credentials found: set AWS_ACCESS_KEY_ID and \
    AWS_SECRET_ACCESS_KEY (or the provider's variables), or use --credentials-file FILE or --profile NAME";

pub(super) fn store_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
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
                return credentials_refusal(&detail);
            }
            if df.is_user() {
                StoreError::Other(detail)
            } else {
                connection_failure(detail)
            }
        }
        SdkError::ResponseError(re) => {
            let status = re.raw().status().as_u16();
            classify(Some(status), None, &error_chain(err))
        }
        _ => StoreError::Other(error_chain(err)),
    }
}

/// A failure to load credentials, `detail` being its whole chain of causes: an SSO login
/// that expired, or none to be had (not worth retrying, and the SDK's chain of reasons,
/// down to the EC2 metadata service, does not say what to do).
pub(super) fn credentials_refusal(detail: &str) -> StoreError {
    tracing::debug!("loading credentials: {detail}");
    if detail.contains("SSO") || detail.contains("UnauthorizedException") {
        // The hint says to log in again.
        let cause = detail.rsplit(": ").next().unwrap_or_default();
        return StoreError::CredentialsExpired(format!("the SSO login gives no credentials ({cause})"));
    }
    StoreError::AccessDenied(NO_CREDENTIALS.into())
}

/// Says what is wrong when the endpoint's answer is not S3 at all: a web page (a wrong
/// `--endpoint-url`, a captive portal) or XML that does not parse.
fn not_s3(raw: &aws_sdk_s3::config::http::HttpResponse, err: &dyn std::error::Error) -> Option<String> {
    let content_type = raw.headers().get("content-type").unwrap_or_default();
    let body = raw.body().bytes().unwrap_or_default();
    let status = raw.status().as_u16();
    if let Some(page) = web_page_answer(status, content_type, body) {
        return Some(page);
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

pub(super) fn redirect_location<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<String> {
    let raw = err.raw_response()?;
    if !matches!(raw.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    raw.headers().get("location").map(str::to_string)
}
