//! `/v1/images`: operators push container images and look at them.
//!
//! `POST /v1/images` (role operator) takes an OCI image archive (`application/x-tar`, or
//! `application/octet-stream`): what `docker save`, `podman save --format oci-archive` or
//! `skopeo copy ... oci-archive:` write. It streams the body into the [`ImageStore`], which
//! checks every blob and layer before anything is kept, and answers the image's record with
//! what the push stored: 201 when the image is new, 200 when the store had it. A refused
//! image is a 400 naming the blob, layer or entry at fault. `GET /v1/images` (role viewer)
//! lists the images, `GET /v1/images/{digest}` shows one.
//!
//! Like `/v1/artifacts`, these routes sit outside the main router's body buffer, and never
//! hold an archive in memory.

use crate::images::{ImageRecord, ImageStore, PushError};
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

use super::ApiState;
use super::artifacts::finish;
use super::body::{DRAIN_MAX_BYTES, drain, next_frame};
use super::error::{ApiError, error_response, internal};
use super::extract::{Authed, Operator, Viewer};

/// The content types a push may declare: a tar, as the tools write it.
const IMAGE_CONTENT_TYPES: [&str; 2] = ["application/x-tar", "application/octet-stream"];

/// The image routes over `state.images`, merged into the operator API by [`super::router`].
pub(super) fn router(state: ApiState) -> axum::Router {
    let limit = state
        .images
        .as_ref()
        .map_or(0, |s| usize::try_from(s.max_bytes()).unwrap_or(usize::MAX));
    axum::Router::new()
        .route(
            "/v1/images",
            post(push).layer(DefaultBodyLimit::max(limit)).get(list),
        )
        .route("/v1/images/{digest}", get(show))
        .layer(axum::middleware::from_fn_with_state(state.clone(), finish))
        .with_state(state)
}

fn unavailable() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "this orchestrator has no image store".into(),
    )
}

/// Role, store and content type: everything checked before the body is read.
async fn admit(
    state: &ApiState,
    request: Request,
) -> Result<(Arc<ImageStore>, String, Body), (Response, Body)> {
    let (mut parts, body) = request.into_parts();
    let caller = match Authed::<Operator>::from_request_parts(&mut parts, state).await {
        Ok(caller) => caller.0,
        Err(e) => return Err((e.into_response(), body)),
    };
    let Some(store) = state.images.clone() else {
        return Err((unavailable(), body));
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if !content_type.is_some_and(|ct| IMAGE_CONTENT_TYPES.contains(&ct.as_str())) {
        let refused = ApiError::UnsupportedMediaType(format!(
            "expected content-type {}: the body is an image archive (a tar)",
            IMAGE_CONTENT_TYPES[0]
        ));
        return Err((refused.into_response(), body));
    }
    Ok((store, caller.sub, body))
}

async fn push(State(state): State<ApiState>, request: Request) -> Response {
    let declared_len = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (store, by, mut body) = match admit(&state, request).await {
        Ok(admitted) => admitted,
        Err((response, mut body)) => {
            // Read (a bounded amount of) what the client still sends, so that it sees our
            // answer and not a reset.
            if declared_len.is_none_or(|len| len <= DRAIN_MAX_BYTES) {
                drain(&mut body).await;
            }
            return response;
        }
    };
    let (tx, done) = store.push(crate::clock::now_unix());
    let mut body_failed = false;
    while let Some(frame) = next_frame(&mut body).await {
        match frame {
            Ok(Some(data)) => {
                // A send fails once the importer has stopped: it refused the image.
                if tx.send(Ok(data)).await.is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                body_failed = true;
                let _ = tx.send(Err(e.to_string())).await;
                break;
            }
        }
    }
    drop(tx);
    let pushed = match done.await {
        Ok(pushed) => pushed,
        Err(e) => return internal(e).into_response(),
    };
    match pushed {
        Ok(pushed) => {
            let v = &pushed.view;
            tracing::info!(
                image = %v.image.digest,
                created = pushed.created,
                platforms = v.image.platforms.len(),
                blobs_new = v.blobs_new,
                bytes_new = v.bytes_new,
                blobs_shared = v.blobs_shared,
                %by,
                "image pushed"
            );
            let status = if pushed.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(pushed.view)).into_response()
        }
        Err(e) => {
            if !body_failed && declared_len.is_none_or(|len| len <= DRAIN_MAX_BYTES) {
                drain(&mut body).await;
            }
            match e {
                PushError::Refused(e) => {
                    ApiError::BadRequest(format!("image: {e}")).into_response()
                }
                PushError::Body(e) => {
                    ApiError::BadRequest(format!("reading the body: {e}")).into_response()
                }
                PushError::Io(e) => internal(e).into_response(),
            }
        }
    }
}

async fn list(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<ImageRecord>>, Response> {
    let store = state.images.ok_or_else(unavailable)?;
    let images = store
        .list()
        .await
        .map_err(|e| internal(e).into_response())?;
    Ok(Json(images))
}

async fn show(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    Path(digest): Path<String>,
) -> Result<Json<ImageRecord>, Response> {
    let store = state.images.ok_or_else(unavailable)?;
    let parsed = edge_proto::digest::from_lower_prefixed(&digest).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "digest: {} is not \"sha256:\" followed by 64 lowercase hex digits",
            edge_proto::field::shown(&digest)
        ))
        .into_response()
    })?;
    match store.get(&parsed).await {
        Ok(Some(image)) => Ok(Json(image)),
        Ok(None) => Err(ApiError::NotFound(format!(
            "no image {digest}; push it with edgectl image push"
        ))
        .into_response()),
        Err(e) => Err(internal(e).into_response()),
    }
}
