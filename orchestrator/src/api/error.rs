//! The API's errors: one [`ApiError`] variant per status code, each answered as JSON
//! `{"error": CODE, "message": TEXT}` ([`ErrorBody`]), and the pass over every response that
//! counts it and gives any other error response that shape.

use crate::auth::{AuthError, Role};
use crate::metrics::Metrics;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::MAX_BODY_BYTES;
use super::extract::is_json_type;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `too_large`, `unsupported_media_type`, `internal`, `unavailable`;
    /// and from the HTTP layer ([`edge_shell::http`]), `headers_too_large` and `uri_too_long`.
    pub error: String,
    /// What went wrong, for a person; names the field for a bad request.
    pub message: String,
}

/// Why a request failed. Each variant is one status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a field is invalid; the message names the field. 400.
    #[error("{0}")]
    BadRequest(String),
    /// No usable bearer token. 401.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// The token is good but its role is too low. 403.
    #[error("this needs the {need} role; the token has {have}")]
    Forbidden { need: Role, have: Role },
    /// The token's role is enough, but what it asks is not done through the API; the
    /// message says what to do instead. 403.
    #[error("{0}")]
    Refused(String),
    /// No such node or route. 404.
    #[error("{0}")]
    NotFound(String),
    /// The body is over [`MAX_BODY_BYTES`]. 413.
    #[error("request body is over the limit of {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body did not arrive within [`super::body::BODY_TIMEOUT`]. 408.
    #[error("the request body did not arrive within {} s", super::body::BODY_TIMEOUT.as_secs())]
    Timeout,
    /// The body is not JSON. 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Our fault (storage, a panicked task); the request may be retried. 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// What the request needs is out of reach now (a node is offline); retry later. 503.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } | Self::Refused(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "API request failed");
        }
        let status = self.status();
        let mut response = error_response(status, self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The stable code for a status.
fn error_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// An error response with the API's JSON body.
pub fn error_response(status: StatusCode, message: String) -> Response {
    let body = ErrorBody {
        error: error_code(status).to_owned(),
        message,
    };
    (status, Json(body)).into_response()
}

/// Our own failure (storage, a panicked task), as a 500 that logs the detail.
pub fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Counts a finished request by status (`edge_api_requests{code}`), and turns an error response that is not already JSON
/// into an [`ErrorBody`] carrying its text (or the status's reason), keeping its headers.
pub(super) async fn count_and_json(metrics: &Metrics, response: Response) -> Response {
    let status = response.status();
    metrics.api_request(status.as_u16());
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_type);
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let fresh = error_response(status, message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}
