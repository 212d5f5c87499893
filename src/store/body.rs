//! The body of a ranged GET: chunks from a stream (hyper's, the SDK's, the memory store's),
//! or bytes read from the GET's own connection straight into the caller's memory
//! (`h1_get.rs`). Either can be taken chunk by chunk or read into a buffer; a broken body
//! is resumed by the store that sent it (`s3/get.rs`).

use super::h1_get::H1Body;
use super::s3::ResumingBody;
use super::{BodyStream, StoreError, StoreResult};
use bytes::Bytes;
use futures::StreamExt;

pub enum Body {
    Chunks {
        stream: BodyStream,
        /// What `read_into` left of the last chunk.
        held: Bytes,
    },
    /// At most `left` more bytes of an HTTP body: a server that ignores a Range sends more.
    Socket {
        body: Box<H1Body>,
        left: u64,
    },
    Resuming(Box<ResumingBody>),
}

impl Body {
    pub fn chunks(stream: BodyStream) -> Body {
        Body::Chunks {
            stream,
            held: Bytes::new(),
        }
    }

    pub fn empty() -> Body {
        Body::chunks(Box::pin(futures::stream::empty()))
    }

    pub fn socket(body: H1Body, len: u64) -> Body {
        Body::Socket {
            body: Box::new(body),
            left: len,
        }
    }

    /// How many bytes are still to come, where the body knows.
    pub fn expected_len(&self) -> Option<u64> {
        match self {
            Body::Chunks { .. } => None,
            Body::Socket { left, .. } => Some(*left).filter(|&l| l != u64::MAX),
            Body::Resuming(body) => Some(body.left()),
        }
    }

    /// The next chunk; `None` at the body's end.
    pub async fn next(&mut self) -> Option<StoreResult<Bytes>> {
        match self {
            Body::Resuming(body) => body.next().await,
            _ => self.next_here().await,
        }
    }

    /// Reads body bytes into `dst` (a copy only from a body that arrives in chunks);
    /// `Ok(0)` at its end.
    pub async fn read_into(&mut self, dst: &mut [u8]) -> StoreResult<usize> {
        match self {
            Body::Resuming(body) => body.read_into(dst).await,
            _ => self.read_here(dst).await,
        }
    }

    /// `next` of a body that does not resume (one that does holds such a body).
    pub(in crate::store) async fn next_here(&mut self) -> Option<StoreResult<Bytes>> {
        match self {
            Body::Chunks { stream, held } if held.is_empty() => stream.next().await,
            Body::Chunks { held, .. } => Some(Ok(std::mem::take(held))),
            Body::Socket { body, left } => {
                if *left == 0 {
                    return None;
                }
                let chunk = match body.next_chunk().await? {
                    Ok(mut chunk) => {
                        chunk.truncate((*left).min(chunk.len() as u64) as usize);
                        *left -= chunk.len() as u64;
                        chunk
                    }
                    Err(e) => return Some(Err(body_error(e))),
                };
                Some(Ok(chunk))
            }
            Body::Resuming(_) => Some(Err(StoreError::Other("a resuming body inside another".into()))),
        }
    }

    /// `read_into` of a body that does not resume.
    pub(in crate::store) async fn read_here(&mut self, dst: &mut [u8]) -> StoreResult<usize> {
        match self {
            Body::Chunks { stream, held } => {
                while held.is_empty() {
                    match stream.next().await {
                        Some(chunk) => *held = chunk?,
                        None => return Ok(0),
                    }
                }
                let n = held.len().min(dst.len());
                dst[..n].copy_from_slice(&held.split_to(n));
                Ok(n)
            }
            Body::Socket { body, left } => {
                let room = (*left).min(dst.len() as u64) as usize;
                if room == 0 {
                    return Ok(0);
                }
                let n = body.read_into(&mut dst[..room]).await.map_err(body_error)?;
                *left -= n as u64;
                Ok(n)
            }
            Body::Resuming(_) => Err(StoreError::Other("a resuming body inside another".into())),
        }
    }
}

fn body_error(e: std::io::Error) -> StoreError {
    StoreError::Transient(format!("GET body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> Body {
        let parts: Vec<StoreResult<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::chunks(Box::pin(futures::stream::iter(parts)))
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_into_buffers_of_any_size_and_then_by_chunk() {
        let mut body = chunks(&[b"0123", b"", b"456789"]);
        let mut three = [0u8; 3];
        assert_eq!(body.read_into(&mut three).await.unwrap(), 3);
        assert_eq!(&three, b"012");
        assert_eq!(body.read_into(&mut three).await.unwrap(), 1);
        assert_eq!(&three[..1], b"3");
        assert_eq!(body.read_into(&mut three).await.unwrap(), 3);
        assert_eq!(&three, b"456");
        // What a read left of a chunk comes first.
        assert_eq!(body.next().await.unwrap().unwrap(), "789");
        assert!(body.next().await.is_none());
        assert_eq!(body.read_into(&mut three).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_chunk_is_an_error_of_the_read() {
        let parts = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(StoreError::Transient("reset".into())),
        ];
        let mut body = Body::chunks(Box::pin(futures::stream::iter(parts)));
        let mut buf = [0u8; 8];
        assert_eq!(body.read_into(&mut buf).await.unwrap(), 2);
        assert!(matches!(body.read_into(&mut buf).await, Err(StoreError::Transient(m)) if m == "reset"));
    }
}
