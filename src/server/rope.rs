//! An object body kept as the pieces it arrived in.
//!
//! CompleteMultipartUpload used to concatenate the parts into one fresh buffer: for a
//! GiB-sized object that is seconds of page zeroing and copying on the server, which
//! the benchmarks then charged to the client. A rope makes completing, copying and
//! slicing an object cost a few reference counts, and GET answers stream the pieces.

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use hyper::body::{Body, Frame, SizeHint};
use s3s::StdError;
use s3s::crypto::{Checksum, Md5};
use s3s::stream::{ByteStream, RemainingLength};

/// Immutable bytes made of shared pieces; never holds an empty piece.
#[derive(Debug, Clone, Default)]
pub struct Rope {
    pieces: Vec<Bytes>,
    /// Offset of each piece's first byte; same length as `pieces`.
    starts: Vec<u64>,
    len: u64,
}

impl Rope {
    /// The pieces of `ropes`, one after the other.
    pub(crate) fn concat<'a>(ropes: impl IntoIterator<Item = &'a Rope>) -> Self {
        let mut joined = Self::default();
        for piece in ropes.into_iter().flat_map(|rope| &rope.pieces) {
            joined.push(piece.clone());
        }
        joined
    }

    fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        self.starts.push(self.len);
        self.len += piece.len() as u64;
        self.pieces.push(piece);
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes in `range`, which must lie within the rope, sharing its pieces.
    pub(crate) fn slice(&self, range: Range<u64>) -> Self {
        assert!(range.start <= range.end && range.end <= self.len, "slice out of bounds");
        let mut sliced = Self::default();
        if range.is_empty() {
            return sliced;
        }
        // The piece holding the first byte: the last one starting at or before it.
        let first = self.starts.partition_point(|&start| start <= range.start) - 1;
        for (piece, &start) in self.pieces[first..].iter().zip(&self.starts[first..]) {
            if start >= range.end {
                break;
            }
            let from = range.start.saturating_sub(start) as usize;
            let to = (range.end - start).min(piece.len() as u64) as usize;
            sliced.push(piece.slice(from..to));
        }
        sliced
    }

    /// The bytes as one buffer: free for a single piece, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match self.pieces.as_slice() {
            [] => Bytes::new(),
            [only] => only.clone(),
            _ => Bytes::from(self.to_vec()),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        for piece in &self.pieces {
            bytes.extend_from_slice(piece);
        }
        bytes
    }

    pub(crate) fn md5(&self) -> [u8; 16] {
        let mut md5 = Md5::new();
        for piece in &self.pieces {
            md5.update(piece);
        }
        md5.finalize()
    }

    /// A response body that sends the pieces in order, with an exact length.
    pub(crate) fn into_body(self) -> RopeBody {
        RopeBody {
            remaining: self.len,
            pieces: self.pieces.into(),
        }
    }
}

impl From<Bytes> for Rope {
    fn from(bytes: Bytes) -> Self {
        let mut rope = Self::default();
        rope.push(bytes);
        rope
    }
}

/// Equal when the bytes are, however they are split into pieces.
impl PartialEq for Rope {
    fn eq(&self, other: &Self) -> bool {
        let bytes = |rope: &Self| {
            rope.pieces
                .iter()
                .flat_map(|piece| piece.iter())
                .copied()
                .collect::<Vec<_>>()
        };
        self.len == other.len && (self.pieces == other.pieces || bytes(self) == bytes(other))
    }
}

impl Eq for Rope {}

/// The pieces of a rope as an HTTP body (for hyper) or a byte stream (for s3s).
pub(crate) struct RopeBody {
    pieces: VecDeque<Bytes>,
    remaining: u64,
}

impl RopeBody {
    fn next_piece(&mut self) -> Option<Bytes> {
        let piece = self.pieces.pop_front()?;
        self.remaining -= piece.len() as u64;
        Some(piece)
    }
}

impl Body for RopeBody {
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        Poll::Ready(self.next_piece().map(|piece| Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl Stream for RopeBody {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.next_piece().map(Ok))
    }
}

impl ByteStream for RopeBody {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(usize::try_from(self.remaining).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(pieces: &[&'static [u8]]) -> Rope {
        Rope::concat(
            pieces
                .iter()
                .map(|piece| Rope::from(Bytes::from_static(piece)))
                .collect::<Vec<_>>()
                .iter(),
        )
    }

    #[test]
    fn slices_across_pieces_match_the_flat_bytes() {
        let rope = rope(&[b"abc", b"", b"defg", b"h", b"ijklm"]);
        let flat = b"abcdefghijklm";
        assert_eq!(rope.len(), flat.len() as u64);
        for start in 0..=flat.len() {
            for end in start..=flat.len() {
                let slice = rope.slice(start as u64..end as u64);
                assert_eq!(slice.to_vec(), &flat[start..end], "{start}..{end}");
                assert_eq!(slice.len(), (end - start) as u64);
            }
        }
    }

    #[test]
    fn a_slice_shares_the_pieces_instead_of_copying() {
        let piece = Bytes::from(vec![7u8; 1024]);
        let rope = Rope::concat([&Rope::from(piece.clone()), &Rope::from(piece.clone())]);
        let inner = rope.slice(100..900).to_bytes();
        assert_eq!(inner.as_ptr(), piece[100..].as_ptr());
    }

    #[test]
    fn md5_and_equality_ignore_how_the_bytes_are_split() {
        let split = rope(&[b"hello ", b"wor", b"ld"]);
        let whole = Rope::from(Bytes::from_static(b"hello world"));
        assert_eq!(split, whole);
        assert_eq!(split.md5(), Md5::checksum(b"hello world"));
        assert_ne!(split, Rope::from(Bytes::from_static(b"hello worle")));
    }

    #[tokio::test]
    async fn the_body_sends_every_piece_with_an_exact_length() {
        use http_body_util::BodyExt;
        let body = rope(&[b"012", b"3456", b"789"]).slice(2..9).into_body();
        assert_eq!(Body::size_hint(&body).exact(), Some(7));
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(&collected[..], b"2345678");
    }
}
