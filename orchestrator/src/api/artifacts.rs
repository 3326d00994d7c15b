//! `/v1/artifacts`: operators push workload executables and list them.
//!
//! `POST /v1/artifacts` (role operator) takes the raw bytes (`application/octet-stream`) and
//! streams them into the [`ArtifactStore`] as they arrive, bounded by the store's limit rather
//! than the API's 64 KiB, with an optional `?sha256=HEX` the bytes must hash to. It answers
//! `{"digest": "sha256:...", "size": N}`: 201 when stored, 200 when the store already had it.
//! `GET /v1/artifacts` (role viewer) lists them.
//!
//! These routes sit outside the main router's body-buffering middleware, so this module does
//! what that middleware does for the others: counts every request and turns any error response
//! into the API's JSON error shape. It never holds an upload in memory and never touches the
//! artifact files except through [`ArtifactStore`].

use crate::artifacts::{ArtifactStore, Digest, PutError, Stored};
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use edge_proto::digest::from_hex;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::ApiState;
use super::body::{DRAIN_MAX_BYTES, drain, next_frame};
use super::error::{ApiError, count_and_json, error_response, internal};
use super::extract::{Authed, Operator, Viewer};
use super::views::{ARTIFACT_CONTENT_TYPE, ArtifactView};

/// The artifact routes over `state.artifacts`. [`super::router`] merges them into the operator
/// API.
pub(super) fn router(state: ApiState) -> axum::Router {
    // Only extractors read this limit (the upload streams its body itself and stops at the
    // store's limit), but it keeps the API's 64 KiB from ever applying to an artifact.
    let limit = state
        .artifacts
        .as_ref()
        .map_or(0, |s| usize::try_from(s.max_bytes()).unwrap_or(usize::MAX));
    axum::Router::new()
        .route(
            "/v1/artifacts",
            post(push).layer(DefaultBodyLimit::max(limit)).get(list),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), finish))
        .with_state(state)
}

/// Counts the request and turns an error response that is not JSON (axum's 405) into the
/// API's [`super::error::ErrorBody`], keeping its headers (`Allow`).
pub(super) async fn finish(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    count_and_json(&state.metrics, response).await
}

fn unavailable() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "this orchestrator has no artifact store".into(),
    )
}

fn too_large(max_bytes: u64) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the artifact is over the limit of {max_bytes} bytes"),
    )
}

/// What an admitted upload is: where it goes, what it must hash to, and who sent it.
struct Admitted {
    store: Arc<ArtifactStore>,
    expected: Option<Digest>,
    by: String,
}

/// Everything checked before a byte of the body is read: role, store, content type, query,
/// declared length.
async fn admit(
    state: &ApiState,
    parts: &mut Parts,
    declared_len: Option<u64>,
) -> Result<Admitted, Response> {
    let caller = Authed::<Operator>::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?
        .0;
    let store = state.artifacts.clone().ok_or_else(unavailable)?;
    match parts.headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected content-type {ARTIFACT_CONTENT_TYPE}: the body is the raw executable"
            ))
            .into_response());
        }
        Some(Err(_)) => {
            return Err(
                ApiError::UnsupportedMediaType("content-type is not readable".into())
                    .into_response(),
            );
        }
        Some(Ok(ct)) => {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !essence.eq_ignore_ascii_case(ARTIFACT_CONTENT_TYPE) {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "expected content-type {ARTIFACT_CONTENT_TYPE}, got {ct}"
                ))
                .into_response());
            }
        }
    }
    let expected = expected_digest(parts).map_err(IntoResponse::into_response)?;
    if let Some(len) = declared_len
        && len > store.max_bytes()
    {
        return Err(too_large(store.max_bytes()));
    }
    Ok(Admitted {
        store,
        expected,
        by: caller.sub,
    })
}

/// The `?sha256=` the upload must hash to: 64 hex digits, or the `sha256:` form.
fn expected_digest(parts: &Parts) -> Result<Option<Digest>, ApiError> {
    let Query(query) = Query::<BTreeMap<String, String>>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut expected = None;
    for (key, value) in query {
        if key != "sha256" {
            return Err(ApiError::BadRequest(format!(
                "{key}: unknown query parameter; the only one is sha256"
            )));
        }
        let hex = value
            .strip_prefix(edge_proto::digest::SHA256_PREFIX)
            .unwrap_or(&value);
        expected = Some(from_hex(hex).ok_or_else(|| {
            ApiError::BadRequest(format!("sha256: {value:?} is not 64 hex digits"))
        })?);
    }
    Ok(expected)
}

/// Why a pushed body was not stored.
enum Refused {
    Put(PutError),
    /// The client's body failed mid-way (it went away, or sent a malformed chunk).
    Body(axum::Error),
}

impl From<PutError> for Refused {
    fn from(e: PutError) -> Self {
        Self::Put(e)
    }
}

/// Streams `body` into the store.
async fn receive(
    store: &ArtifactStore,
    expected: Option<Digest>,
    body: &mut Body,
) -> Result<Stored, Refused> {
    let mut upload = store.begin(expected).await?;
    while let Some(frame) = next_frame(body).await {
        // `None` is a trailers frame: nothing we use.
        if let Some(data) = frame.map_err(Refused::Body)? {
            upload.write(&data).await?;
        }
    }
    Ok(upload.finish().await?)
}

async fn push(State(state): State<ApiState>, request: Request) -> Response {
    let declared_len = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (mut parts, mut body) = request.into_parts();
    // A refusal is answered only after reading (a bounded amount of) what the client is still
    // sending: closing on unread data would show it a reset instead of our answer.
    let drain_limit = declared_len.is_none_or(|len| len <= DRAIN_MAX_BYTES);
    let admitted = match admit(&state, &mut parts, declared_len).await {
        Ok(admitted) => admitted,
        Err(response) => {
            if drain_limit {
                drain(&mut body).await;
            }
            return response;
        }
    };
    match receive(&admitted.store, admitted.expected, &mut body).await {
        Ok(stored) => {
            let digest = edge_proto::digest::to_prefixed(&stored.digest);
            tracing::info!(
                %digest,
                size = stored.size,
                created = stored.created,
                by = %admitted.by,
                "artifact pushed"
            );
            let status = if stored.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(ArtifactView::new(&stored.digest, stored.size))).into_response()
        }
        Err(Refused::Body(e)) => {
            ApiError::BadRequest(format!("reading the body: {e}")).into_response()
        }
        Err(Refused::Put(e)) => {
            drain(&mut body).await;
            match e {
                PutError::TooLarge { max_bytes } => too_large(max_bytes),
                PutError::DigestMismatch { .. } => {
                    ApiError::BadRequest(format!("sha256: {e}")).into_response()
                }
                PutError::Source(e) => {
                    ApiError::BadRequest(format!("reading the body: {e}")).into_response()
                }
                PutError::Io(e) => internal(e).into_response(),
            }
        }
    }
}

async fn list(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<ArtifactView>>, Response> {
    let store = state.artifacts.ok_or_else(unavailable)?;
    let artifacts = store
        .list()
        .await
        .map_err(|e| internal(e).into_response())?;
    Ok(Json(
        artifacts
            .iter()
            .map(|a| ArtifactView::new(&a.digest, a.size))
            .collect(),
    ))
}
