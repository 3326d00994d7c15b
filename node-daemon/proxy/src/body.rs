//! Bodies: the proxy's own short answers, and the hook that tells the listener an answer
//! has gone out.

use crate::{Body, BodyError};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body of `bytes`, whole.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// No body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The proxy's own answer: `status` with a one-line text body that says why.
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `body`, calling `done` once when it ends, fails or is dropped.
pub fn on_end(body: Body, done: impl FnOnce() + Send + 'static) -> Body {
    OnEnd {
        inner: body,
        done: Some(Box::new(done)),
    }
    .boxed_unsync()
}

struct OnEnd {
    inner: Body,
    done: Option<Box<dyn FnOnce() + Send>>,
}

impl OnEnd {
    fn fire(&mut self) {
        if let Some(done) = self.done.take() {
            done();
        }
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.fire();
    }
}

impl hyper::body::Body for OnEnd {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.fire();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
