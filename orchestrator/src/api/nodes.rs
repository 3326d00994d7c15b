//! `/v1/nodes`: list, show and delete nodes, and cordon, uncordon or drain one.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::collections::BTreeMap;

use super::ApiState;
use super::error::{ApiError, internal};
use super::extract::{Admin, Authed, Operator, Viewer};
use super::time::rfc3339;
use super::views::NodeView;
use crate::node_admin;
use orchestrator_core::events::{MAX_QUERY, TrackPoint, What};
use serde::Serialize;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{name_or_id}", get(get_node).delete(delete_node))
        .route("/v1/nodes/{name_or_id}/cordon", post(cordon))
        .route("/v1/nodes/{name_or_id}/uncordon", post(uncordon))
        .route("/v1/nodes/{name_or_id}/drain", post(drain))
        .route("/v1/nodes/{name_or_id}/track", get(track))
}

/// The points of a node's track, oldest first.
#[derive(Debug, Serialize)]
struct TrackView {
    node: String,
    node_id: String,
    points: Vec<TrackPointView>,
}

#[derive(Debug, Serialize)]
struct TrackPointView {
    /// When the node reported it, on its clock.
    at: String,
    at_ms: u64,
    #[serde(flatten)]
    point: TrackPoint,
}

/// `since` (milliseconds since the Unix epoch, the node's clock) and `limit` (1 to 1,000,
/// the newest kept).
fn parse_track_query(query: &BTreeMap<String, String>) -> Result<(u64, usize), ApiError> {
    let (mut since, mut limit) = (0, MAX_QUERY);
    for (key, value) in query {
        match key.as_str() {
            "since" => since = super::events::since_ms("since", value)?,
            "limit" => limit = super::events::limit(value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{}: unknown query parameter; use since or limit",
                    edge_proto::field::shown(other)
                )));
            }
        }
    }
    Ok((since, limit))
}

/// `GET /v1/nodes/{name_or_id}/track`: the positions the node reported, the newest `limit`
/// since `since`, oldest first (those of its time offline came when it synced).
async fn track(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    Path(name_or_id): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TrackView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (since, limit) = parse_track_query(&query)?;
    let (id, name) = {
        let fleet = state.registry.fleet();
        let node = fleet
            .find(&name_or_id)
            .ok_or_else(|| no_such_node(&name_or_id))?;
        (node.id.to_string(), node.name.clone())
    };
    let registry = state.registry.clone();
    let hex = id.clone();
    let stored = tokio::task::spawn_blocking(move || registry.events(Some(&hex)))
        .await
        .map_err(|e| internal(&e))?
        .map_err(|e| internal(&e))?;
    let mut points: Vec<(u64, TrackPoint)> = stored
        .into_iter()
        .filter(|e| e.at_ms >= since)
        .filter_map(|e| match e.what {
            What::Location(p) => Some((e.at_ms, p)),
            _ => None,
        })
        .collect();
    points.sort_by_key(|(at_ms, _)| *at_ms);
    let newest = points.split_off(points.len().saturating_sub(limit));
    Ok(Json(TrackView {
        node: name,
        node_id: id,
        points: newest
            .into_iter()
            .map(|(at_ms, point)| TrackPointView {
                at: rfc3339(at_ms / 1000),
                at_ms,
                point,
            })
            .collect(),
    }))
}

/// Which nodes `GET /v1/nodes` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFilter {
    Online,
    Offline,
}

fn parse_node_query(query: &BTreeMap<String, String>) -> Result<Option<StatusFilter>, ApiError> {
    let mut filter = None;
    for (key, value) in query {
        match key.as_str() {
            "status" => {
                filter = Some(match value.as_str() {
                    "online" => StatusFilter::Online,
                    "offline" => StatusFilter::Offline,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "status: {other:?} is not a status; use online or offline"
                        )));
                    }
                });
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown query parameter; the only one is status"
                )));
            }
        }
    }
    Ok(filter)
}

async fn list_nodes(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = parse_node_query(&query)?;
    let now = crate::clock::now_unix();
    let mut nodes: Vec<NodeView> = {
        let fleet = state.registry.fleet();
        fleet
            .nodes()
            .map(|n| (n, fleet.is_online(n.id)))
            .filter(|(_, online)| match filter {
                None => true,
                Some(StatusFilter::Online) => *online,
                Some(StatusFilter::Offline) => !*online,
            })
            .map(|(n, online)| NodeView::new(n, online).with_conflict(fleet.conflict(n.id, now)))
            .collect()
    };
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(nodes))
}

async fn get_node(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    Path(name_or_id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let fleet = state.registry.fleet();
    let node = fleet
        .find(&name_or_id)
        .ok_or_else(|| no_such_node(&name_or_id))?;
    let conflict = fleet.conflict(node.id, crate::clock::now_unix());
    let mut view = NodeView::new(node, fleet.is_online(node.id)).with_conflict(conflict);
    view.proxy = state
        .reports
        .traffic
        .of_node(node.id)
        .as_ref()
        .map(Into::into);
    Ok(Json(view))
}

pub(super) fn no_such_node(name_or_id: &str) -> ApiError {
    ApiError::NotFound(format!("no node named or with id {name_or_id:?}"))
}

async fn delete_node(
    _: Authed<Admin>,
    State(state): State<ApiState>,
    Path(name_or_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = state
        .registry
        .fleet()
        .find(&name_or_id)
        .map(|n| n.id)
        .ok_or_else(|| no_such_node(&name_or_id))?;
    let reports = state.reports.clone();
    // The store flushes to disk; keep that off the async workers.
    let deleted = tokio::task::spawn_blocking(move || {
        node_admin::delete_node(&state.registry, &state.links, &state.deployments, id)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    if deleted {
        reports.traffic.forget_node(id);
        tracing::info!(node = %id, name = %name_or_id, "node deleted by the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        // Deleted by a concurrent request between the lookup and now.
        Err(no_such_node(&name_or_id))
    }
}

async fn cordon(
    a: Authed<Operator>,
    s: State<ApiState>,
    p: Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    set_cordon(a, s, p, true, false).await
}

async fn uncordon(
    a: Authed<Operator>,
    s: State<ApiState>,
    p: Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    set_cordon(a, s, p, false, false).await
}

async fn drain(
    a: Authed<Operator>,
    s: State<ApiState>,
    p: Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    set_cordon(a, s, p, true, true).await
}

async fn set_cordon(
    _: Authed<Operator>,
    State(state): State<ApiState>,
    Path(name_or_id): Path<String>,
    cordoned: bool,
    drain: bool,
) -> Result<Json<NodeView>, ApiError> {
    let no_such_node = || no_such_node(&name_or_id);
    let id = state
        .registry
        .fleet()
        .find(&name_or_id)
        .map(|n| n.id)
        .ok_or_else(no_such_node)?;
    let (registry, deployments) = (state.registry.clone(), state.deployments.clone());
    // The registry write flushes to disk; keep it off the async workers.
    let committed = tokio::task::spawn_blocking(move || {
        node_admin::set_cordon(&registry, &deployments, id, cordoned, drain)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?
    .ok_or_else(no_such_node)?;
    committed.wait().await.map_err(internal)?;
    tracing::info!(node = %id, cordoned, drain, "node cordon changed by the API");
    let fleet = state.registry.fleet();
    let node = fleet.node(id).ok_or_else(no_such_node)?;
    Ok(Json(NodeView::new(node, fleet.is_online(id))))
}
