//! `/v1/models`: operators push the ONNX models the fleet routes and places with.
//!
//! `POST /v1/models[?purpose=route|place]` (role operator) takes a model's bytes
//! (`application/octet-stream`, at most [`edge_ai::MAX_MODEL_BYTES`]), checks it with both
//! readers ([`crate::models::check`]), stores it and makes it the fleet's model for its
//! purpose (the one asked for, else the one the model declares): 201 when the model is new,
//! 200 when the store had it. A refused model is a 400 that names what failed. `GET
//! /v1/models` (role viewer) lists the models and which one serves each purpose.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use crate::deployer::PlacementView;
use crate::models::{ModelRecord, PushError, PushedModel};
use edge_proto::NodeId;
use orchestrator_core::scheduler::learned::PLACE_PURPOSE;

use super::ApiState;
use super::artifacts::finish;
use super::error::{ApiError, error_response, internal};
use super::extract::{Authed, Operator, Viewer};

/// The model routes over `state.models`, merged into the operator API by [`super::router`].
pub(super) fn router(state: ApiState) -> axum::Router {
    let limit = usize::try_from(edge_ai::MAX_MODEL_BYTES).unwrap_or(usize::MAX);
    axum::Router::new()
        .route(
            "/v1/models",
            post(push).layer(DefaultBodyLimit::max(limit)).get(list),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), finish))
        .with_state(state)
}

fn unavailable() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "this orchestrator has no model store".into(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    purpose: Option<String>,
}

async fn push(
    caller: Authed<Operator>,
    State(state): State<ApiState>,
    Query(query): Query<PushQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(store) = state.models.clone() else {
        return unavailable();
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if content_type.as_deref() != Some("application/octet-stream") {
        return ApiError::UnsupportedMediaType(
            "expected content-type application/octet-stream: the body is an ONNX model".into(),
        )
        .into_response();
    }
    // A model for placement must fit the scheduler's features before it is stored: one
    // that cannot place is refused, and placement keeps what it had.
    let place = {
        let (bytes, purpose) = (body.clone(), query.purpose.clone());
        tokio::task::spawn_blocking(move || crate::placement::for_push(&bytes, purpose.as_deref()))
            .await
            .ok()
            .flatten()
    };
    let place = match place {
        Some(Err(unusable)) => {
            tracing::info!(detail = %unusable, by = %caller.0.sub, "placement model refused");
            return ApiError::BadRequest(format!("model: {unusable}")).into_response();
        }
        Some(Ok(predictor)) => Some(predictor),
        None => None,
    };
    match store
        .push(body, query.purpose.as_deref(), crate::clock::now_unix())
        .await
    {
        Ok(mut pushed) => {
            if pushed.active_for.as_deref() == Some(PLACE_PURPOSE)
                && let Some(predictor) = place
            {
                // Swapped in at once: the next placement uses it.
                state
                    .deployments
                    .set_place_model(Ok(predictor), Some(pushed.model.digest.clone()));
            }
            offer(&state, &mut pushed);
            tracing::info!(
                model = %pushed.model.digest,
                created = pushed.created,
                purpose = pushed.active_for.as_deref().unwrap_or("none"),
                offered_nodes = pushed.offered_nodes,
                cannot_run = pushed.cannot_run.len(),
                by = %caller.0.sub,
                "model pushed"
            );
            let status = if pushed.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(pushed)).into_response()
        }
        Err(PushError::Io(e)) => internal(e).into_response(),
        Err(e) => ApiError::BadRequest(format!("model: {e}")).into_response(),
    }
}

/// Sends a model the fleet now uses for a purpose nodes serve to every online node whose
/// reader runs it, and says in `pushed` how many got it and which could not.
fn offer(state: &ApiState, pushed: &mut PushedModel) {
    let Some(active) = pushed
        .active_for
        .as_deref()
        .and_then(|purpose| pushed.model.offered_for(purpose))
    else {
        return;
    };
    let online: Vec<(NodeId, String, bool)> = {
        let fleet = state.registry.fleet();
        fleet
            .nodes()
            .filter(|n| fleet.is_online(n.id))
            .map(|n| {
                (
                    n.id,
                    n.name.clone(),
                    active.offered_to(&n.info.model_operators, fleet.protocol(n.id)),
                )
            })
            .collect()
    };
    let (mut offered, mut cannot_run) = (0, Vec::new());
    for (id, name, runs) in online {
        if runs {
            // A node whose session is gone or whose queue is full is offered it at its next
            // session: what it says after the welcome asks for it.
            if state.links.send(id, active.offer()) {
                offered += 1;
            }
        } else if cannot_run.len() < crate::models::MAX_NAMED {
            cannot_run.push(name);
        }
    }
    pushed.offered_nodes = offered;
    pushed.cannot_run = cannot_run;
}

/// `GET /v1/models`: every model, and the one each purpose uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub models: Vec<ModelRecord>,
    /// Purpose to `sha256:...`.
    pub active: BTreeMap<String, String>,
    /// Whether placement uses the place model or the fallback (least allocated), and why.
    /// Absent from an orchestrator older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementView>,
}

async fn list(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
) -> Result<Json<ModelList>, Response> {
    let store = state.models.clone().ok_or_else(unavailable)?;
    let models = store
        .list()
        .await
        .map_err(|e| internal(e).into_response())?;
    let active = store
        .active()
        .await
        .map_err(|e| internal(e).into_response())?;
    Ok(Json(ModelList {
        models,
        active,
        placement: Some(state.deployments.placement_view()),
    }))
}
