//! The HTTP layer in front of s3s on the main listener: counts each request, applies
//! the quirks that refuse requests outright, forwards the rest to s3s (which verifies
//! SigV4 and runs the backend), then applies the quirks that alter answers.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use s3s::service::S3Service;
use s3s::{HttpError, HttpResponse};

use super::MAX_OBJECT_SIZE;
use super::body::{ResponseBody, s3_error_response, with_fault};
use super::keys::AcceptedKeys;
use super::operation::{Operation, S3Call, declared_body_length};
use super::quirks::Quirks;
use super::redirect::{RedirectTarget, redirect_response};
use super::stats::RequestStats;

#[derive(Clone)]
pub(crate) struct Front {
    pub(crate) s3: S3Service,
    pub(crate) keys: Arc<AcceptedKeys>,
    pub(crate) quirks: Arc<Quirks>,
    pub(crate) stats: Arc<RequestStats>,
    pub(crate) redirect: Arc<RedirectTarget>,
}

impl Front {
    pub(crate) async fn handle(self, req: Request<Incoming>) -> Result<Response<ResponseBody>, HttpError> {
        let call = S3Call::classify(req.method(), req.uri(), req.headers());
        let _in_flight = self.stats.record(call.operation.name());
        if req
            .headers()
            .get("x-amz-content-sha256")
            .is_some_and(|v| v == "UNSIGNED-PAYLOAD")
        {
            self.stats.count_unsigned_payload();
        }
        tokio::time::sleep(self.quirks.latency()).await;
        if let Some(refusal) = self.refusal(&call, &req) {
            return Ok(refusal);
        }
        let directives = self.quirks.directives(&call, req.uri());
        let mut req = req.map(s3s::Body::from);
        req.extensions_mut().insert(directives);
        let response = self.s3.call(req).await?;
        Ok(self.alter_answer(&call, response))
    }

    /// Answers that never reach s3s: injected failures, provider restrictions, and
    /// bodies too large to buffer. These are decided before authentication.
    fn refusal(&self, call: &S3Call, req: &Request<Incoming>) -> Option<Response<ResponseBody>> {
        self.quirks
            .injected_failure(call.operation.name(), req.method())
            .or_else(|| self.quirks.rejection(call, req.headers()))
            .or_else(|| self.keys.token_refusal(req.headers()))
            .or_else(|| {
                let too_large = declared_body_length(req.headers()).is_some_and(|length| length > MAX_OBJECT_SIZE);
                too_large.then(|| {
                    s3_error_response(
                        StatusCode::BAD_REQUEST,
                        "EntityTooLarge",
                        "Your proposed upload exceeds the maximum allowed object size.",
                    )
                })
            })
    }

    fn alter_answer(&self, call: &S3Call, response: HttpResponse) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        if self.quirks.drops_user_metadata() {
            let user_metadata: Vec<_> = parts
                .headers
                .keys()
                .filter(|name| name.as_str().starts_with("x-amz-meta-"))
                .cloned()
                .collect();
            for name in user_metadata {
                parts.headers.remove(name);
            }
        }
        let body = body.boxed_unsync();
        // Only a successful, authenticated GetObject gets redirected or a faulty body.
        if call.operation != Operation::GetObject || !parts.status.is_success() {
            return Response::from_parts(parts, body);
        }
        if self.quirks.redirects_get()
            && let (Some(bucket), Some(key)) = (&call.bucket, &call.key)
        {
            return redirect_response(&self.redirect.location(bucket, key));
        }
        let length = parts.headers.get(http::header::CONTENT_LENGTH);
        let length = length.and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        self.stats.count_object_bytes(length.unwrap_or(0));
        match self.quirks.take_body_fault() {
            Some(fault) => Response::from_parts(parts, with_fault(body, fault)),
            None => Response::from_parts(parts, body),
        }
    }
}
