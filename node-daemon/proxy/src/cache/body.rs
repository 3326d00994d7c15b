//! Bodies: read one up to a limit without ever holding more, and pass on what was read
//! followed by the rest when it is larger.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::{Body, BodyError};

/// A whole body in memory.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// How reading a body up to a limit ended.
pub(crate) enum Limited {
    /// The whole body, at most the limit long (trailers are dropped: a cache keeps none).
    Complete(Bytes),
    /// Longer than the limit: what was read, then the rest as it comes.
    TooLong(Body),
    /// The body failed: what was read, then the error.
    Failed(Body),
}

/// Reads `body` until its end or past `limit` bytes, whichever is first. A declared length
/// over the limit is not read at all.
pub(crate) async fn read_limited(mut body: Body, limit: u64) -> Limited {
    if body.size_hint().lower() > limit {
        return Limited::TooLong(body);
    }
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len: u64 = 0;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    len = len.saturating_add(data.len() as u64);
                }
                frames.push_back(frame);
                if len > limit {
                    return Limited::TooLong(Prefixed::new(frames, Some(body), None).boxed());
                }
            }
            Some(Err(error)) => {
                return Limited::Failed(Prefixed::new(frames, None, Some(error)).boxed());
            }
        }
    }
    let mut whole = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
    }
    Limited::Complete(whole.freeze())
}

/// Frames already read, then an error or the rest of the body they came from.
struct Prefixed {
    prefix: VecDeque<Frame<Bytes>>,
    error: Option<BodyError>,
    rest: Option<Body>,
}

impl Prefixed {
    fn new(prefix: VecDeque<Frame<Bytes>>, rest: Option<Body>, error: Option<BodyError>) -> Self {
        Self {
            prefix,
            error,
            rest,
        }
    }

    fn boxed(self) -> Body {
        BodyExt::boxed_unsync(self)
    }
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .prefix
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that yields the frames it was given, then ends.
    struct Scripted(VecDeque<Result<Frame<Bytes>, BodyError>>);

    impl HttpBody for Scripted {
        type Data = Bytes;
        type Error = BodyError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            Poll::Ready(self.get_mut().0.pop_front())
        }
    }

    fn chunks(parts: &[&'static [u8]], then_error: bool) -> Body {
        let mut frames: VecDeque<Result<Frame<Bytes>, BodyError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        if then_error {
            frames.push_back(Err("cut".into()));
        }
        BodyExt::boxed_unsync(Scripted(frames))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let limited = read_limited(chunks(&[b"hel", b"lo"], false), 5).await;
        assert!(matches!(limited, Limited::Complete(b) if b == "hello"));
        let limited = read_limited(empty(), 0).await;
        assert!(matches!(limited, Limited::Complete(b) if b.is_empty()));
    }

    #[tokio::test]
    async fn a_longer_body_is_passed_on_whole_after_reading_just_past_the_limit() {
        let Limited::TooLong(body) =
            read_limited(chunks(&[b"abc", b"def", b"ghi"], false), 4).await
        else {
            panic!("longer than the limit");
        };
        let bytes = body.collect().await.expect("no error").to_bytes();
        assert_eq!(bytes, "abcdefghi");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_not_read() {
        let Limited::TooLong(body) = read_limited(full(Bytes::from_static(b"0123456789")), 4).await
        else {
            panic!("longer than the limit");
        };
        assert_eq!(body.size_hint().exact(), Some(10));
    }

    #[tokio::test]
    async fn a_failing_body_passes_on_what_was_read_then_its_error() {
        let Limited::Failed(mut body) = read_limited(chunks(&[b"ab"], true), 100).await else {
            panic!("the body failed");
        };
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"ab")));
        assert!(body.frame().await.expect("the error").is_err());
    }
}
