//! Request bodies read within bounds: the main router reads every body (at most
//! [`MAX_BODY_BYTES`]) before a handler looks at the request, and a refused body is still
//! read and dropped, within limits, so a client that is still sending sees the answer rather
//! than a reset connection. A body has [`BODY_TIMEOUT`] to arrive: its connection holds one
//! of the listener's slots, which a client that trickles a body in must not keep.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::header;
use std::time::Duration;

use super::MAX_BODY_BYTES;
use super::error::ApiError;

/// How long a client has to send a whole body (at most [`MAX_BODY_BYTES`]) once its head is
/// in: as long as it has for the head.
pub(super) const BODY_TIMEOUT: Duration = super::LIMITS.header_timeout;

/// Reads the whole body (at most [`MAX_BODY_BYTES`]) before anything looks at the request.
/// A handler may refuse a request without reading its body (a bad token, say); had the body not
/// been read, the connection would close with unread data and the client, still sending, could
/// see a reset instead of our answer.
pub(super) async fn buffer_body(request: Request) -> Result<Request, ApiError> {
    let declared_len = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = request.into_parts();
    let bytes = tokio::time::timeout(BODY_TIMEOUT, read_body(body, declared_len))
        .await
        .map_err(|_| ApiError::Timeout)??;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Reads a body of at most [`MAX_BODY_BYTES`]. A body over that is refused, but the rest of
/// it is read and dropped (within limits), so a client still sending sees our 413 rather than
/// a reset connection.
async fn read_body(mut body: Body, declared_len: Option<u64>) -> Result<Vec<u8>, ApiError> {
    let limit = MAX_BODY_BYTES as u64;
    if let Some(len) = declared_len
        && len > limit
    {
        if len <= DRAIN_MAX_BYTES {
            drain(&mut body).await;
        }
        return Err(ApiError::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(frame) = next_frame(&mut body).await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if let Some(data) = frame {
            if (buf.len() + data.len()) as u64 > limit {
                drain(&mut body).await;
                return Err(ApiError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// How much of a too-large body is read and dropped, and for how long at most.
pub(super) const DRAIN_MAX_BYTES: u64 = 1 << 20;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

pub(super) async fn drain(body: &mut Body) {
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
        let mut seen = 0u64;
        while seen <= DRAIN_MAX_BYTES {
            match next_frame(body).await {
                Some(Ok(data)) => seen += data.map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
    })
    .await;
}

/// The next frame's data (`None` for a trailers frame); `None` at the end.
pub(super) async fn next_frame(body: &mut Body) -> Option<Result<Option<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx))
        .await
        .map(|frame| frame.map(|f| f.into_data().ok()))
}
