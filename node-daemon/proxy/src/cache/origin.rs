//! What the cache sits in front of: anything that answers an HTTP request.

use std::future::Future;
use std::pin::Pin;

use crate::Body;

/// The server behind the cache. The proxy's implementation forwards to a route's backend;
/// tests use a plain HTTP client.
pub trait Origin: Send + Sync {
    /// Answers `req`. A response of any status is `Ok`; `Err` means there was no response.
    fn fetch(
        &self,
        req: http::Request<Body>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, OriginError>> + Send + '_>>;
}

/// Why the origin gave no response. Every kind counts as an origin failure for serving a
/// stale response; the cache answers 502 or 504 when none may be served.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// No connection could be made, or it closed before an answer (answered 502).
    #[error("the origin is unreachable")]
    Unreachable,
    /// No answer within the origin's deadline (answered 504).
    #[error("the origin did not answer in time")]
    Timeout,
    /// Anything else that left no response, e.g. a malformed one (answered 502). The text is
    /// for the log only.
    #[error("the origin failed: {0}")]
    Other(String),
}
