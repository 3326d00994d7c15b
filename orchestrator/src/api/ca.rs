//! `/v1/ca`: the fleet's CA, and rotating it without a restart (see `registry::Authority`).

use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};

use super::ApiState;
use super::error::{ApiError, internal};
use super::extract::{Admin, Authed, Viewer};
use crate::registry::Rotation;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/v1/ca", get(show))
        .route("/v1/ca/rotate", post(rotate))
}

/// The CA nodes pin and, during a rotation, the next one and the nodes still to move.
async fn show(_: Authed<Viewer>, State(state): State<ApiState>) -> Json<Rotation> {
    Json(state.registry.rotation())
}

/// Starts a rotation (or carries on with the one under way): every node online is given a
/// certificate of the new CA at once, over its session; the others when they return.
async fn rotate(
    _: Authed<Admin>,
    State(state): State<ApiState>,
) -> Result<Json<Rotation>, ApiError> {
    let registry = state.registry.clone();
    tokio::task::spawn_blocking(move || registry.rotate_ca())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    // The answer is the rotation as it started: the moves below may finish it before this
    // returns, and the caller asked to start one.
    let started = state.registry.rotation();
    let online: Vec<_> = {
        let fleet = state.registry.fleet();
        fleet
            .nodes()
            .filter(|n| fleet.is_online(n.id))
            .map(|n| n.id)
            .collect()
    };
    for node in online {
        let Some(conn) = state.links.connection(node) else {
            continue;
        };
        // It counts as moved once it says it stored the certificate.
        if let Some(msg) =
            crate::server::move_to_next_ca(&state.registry, &state.metrics, &conn, node)
        {
            state.links.send(node, msg);
        }
    }
    Ok(Json(started))
}
