//! Response bodies: the one body type both listeners answer with, S3 XML error
//! responses, and bodies that misbehave on purpose (connection reset, stall).

use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use s3s::StdError;

pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, StdError>;

pub(crate) fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// An S3-style XML error, as real providers and gateways in front of them answer.
pub(crate) fn s3_error_response(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
        xml_escape(code),
        xml_escape(message)
    );
    let mut response = Response::new(full(Bytes::from(xml)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/xml"),
    );
    response
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// How a response body misbehaves once `after_bytes` bytes have been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// Fail the body, which makes hyper drop the connection mid-response: the client
    /// sees fewer bytes than Content-Length announced.
    Reset { after_bytes: u64 },
    /// Pause for `stall`, then send the rest (exercises client read timeouts).
    Stall { after_bytes: u64, stall: Duration },
}

impl BodyFault {
    fn after_bytes(self) -> u64 {
        match self {
            Self::Reset { after_bytes } | Self::Stall { after_bytes, .. } => after_bytes,
        }
    }
}

/// How long a reset waits for the bytes sent before it to leave the server.
const FLUSH_GRACE: Duration = Duration::from_millis(20);

struct FaultyBody {
    inner: ResponseBody,
    fault: Option<BodyFault>,
    /// Bytes still allowed through before the fault fires.
    budget: u64,
    /// The part of a chunk held back because it crossed the budget.
    held_back: Option<Bytes>,
}

pub(crate) fn with_fault(inner: ResponseBody, fault: BodyFault) -> ResponseBody {
    let state = FaultyBody {
        inner,
        fault: Some(fault),
        budget: fault.after_bytes(),
        held_back: None,
    };
    StreamBody::new(stream::unfold(state, next_frame)).boxed_unsync()
}

async fn next_frame(mut body: FaultyBody) -> Option<(Result<Frame<Bytes>, StdError>, FaultyBody)> {
    if let Some(rest) = body.held_back.take() {
        match body.fault.take() {
            Some(BodyFault::Reset { .. }) => {
                // hyper drops its unsent buffer when a body fails: give it time to
                // flush the allowed bytes (and the headers) to the client first.
                tokio::time::sleep(FLUSH_GRACE).await;
                let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected mid-body reset");
                return Some((Err(reset.into()), body));
            }
            Some(BodyFault::Stall { stall, .. }) => tokio::time::sleep(stall).await,
            None => {}
        }
        return Some((Ok(Frame::data(rest)), body));
    }
    let frame = match body.inner.frame().await? {
        Ok(frame) => frame,
        Err(error) => return Some((Err(error), body)),
    };
    let Some(data) = frame.data_ref().filter(|_| body.fault.is_some()) else {
        return Some((Ok(frame), body));
    };
    let len = data.len() as u64;
    if len <= body.budget && body.budget > 0 {
        body.budget -= len;
        return Some((Ok(frame), body));
    }
    let mut data = data.clone();
    let allowed = data.split_to(usize::try_from(body.budget).unwrap_or(usize::MAX));
    body.budget = 0;
    body.held_back = Some(data);
    Some((Ok(Frame::data(allowed)), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: ResponseBody) -> (Vec<u8>, bool) {
        let mut body = body;
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => bytes.extend_from_slice(frame.data_ref().map_or(&[][..], |data| &data[..])),
                Err(_) => return (bytes, true),
            }
        }
        (bytes, false)
    }

    #[tokio::test]
    async fn reset_sends_exactly_the_budget_then_fails() {
        let body = with_fault(
            full(Bytes::from_static(b"0123456789")),
            BodyFault::Reset { after_bytes: 4 },
        );
        assert_eq!(collect(body).await, (b"0123".to_vec(), true));
    }

    #[tokio::test]
    async fn reset_at_zero_bytes_fails_immediately() {
        let body = with_fault(
            full(Bytes::from_static(b"0123456789")),
            BodyFault::Reset { after_bytes: 0 },
        );
        assert_eq!(collect(body).await, (Vec::new(), true));
    }

    #[tokio::test]
    async fn stall_delivers_everything_after_pausing() {
        let stall = Duration::from_millis(50);
        let body = with_fault(
            full(Bytes::from_static(b"0123456789")),
            BodyFault::Stall { after_bytes: 3, stall },
        );
        let started = std::time::Instant::now();
        assert_eq!(collect(body).await, (b"0123456789".to_vec(), false));
        assert!(started.elapsed() >= stall);
    }
}
