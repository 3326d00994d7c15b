//! `/v1/cache/purge`: removes cached responses from the nodes' proxies.
//!
//! The request is checked by `orchestrator_core::purge` (400 naming the field), its nodes
//! found in the registry (404 for an unknown `node`), and each online node asked over its
//! own connection (`crate::purge`), a few at a time, each within
//! [`crate::purge::PURGE_TIMEOUT`]. A node that is offline, has no proxy or does not answer
//! in time is an error in its own entry of the answer; the others are purged all the same,
//! and the call always answers.

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use edge_proto::NodeId;
use orchestrator_core::purge::{PurgeAnswer, PurgeBody, Targets, selector_matches};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::ApiState;
use super::error::{ApiError, internal};
use super::extract::{Authed, JsonBody, Operator};
use super::nodes::no_such_node;

/// How many nodes are asked at once: a fleet purge over thousands of nodes opens this many
/// streams at a time, not thousands.
const CONCURRENT_NODES: usize = 64;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new().route("/v1/cache/purge", post(purge))
}

async fn purge(
    claims: Authed<Operator>,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<PurgeBody>,
) -> Result<Json<PurgeAnswer>, ApiError> {
    let purge = body
        .validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let targets: Vec<(NodeId, String)> = {
        let fleet = state.registry.fleet();
        match &purge.targets {
            Targets::Node(wanted) => {
                let node = fleet.find(wanted).ok_or_else(|| no_such_node(wanted))?;
                vec![(node.id, node.name.clone())]
            }
            Targets::Selector(selector) => fleet
                .nodes()
                .filter(|n| selector_matches(selector, &n.info.labels))
                .map(|n| (n.id, n.name.clone()))
                .collect(),
            Targets::Fleet => fleet.nodes().map(|n| (n.id, n.name.clone())).collect(),
        }
    };
    let permits = Arc::new(Semaphore::new(CONCURRENT_NODES));
    let mut asked = JoinSet::new();
    let mut results = Vec::with_capacity(targets.len());
    for (id, name) in targets {
        let Some(conn) = state.links.connection(id) else {
            results.push((name, Err("offline".to_owned())));
            continue;
        };
        let (req, permits) = (purge.request.clone(), permits.clone());
        asked.spawn(async move {
            // Never closed, so acquiring only waits.
            let _permit = permits.acquire_owned().await;
            let result = crate::purge::purge_node(&conn, req).await;
            if let Err(error) = &result {
                tracing::warn!(node = %name, kind = error.kind(), %error, "cache purge failed on a node");
            }
            (name, result.map_err(|e| e.to_string()))
        });
    }
    while let Some(done) = asked.join_next().await {
        results.push(done.map_err(internal)?);
    }
    let answer = PurgeAnswer::new(results);
    let failed = answer.nodes.iter().filter(|n| n.error.is_some()).count();
    tracing::info!(
        by = %claims.0.sub,
        nodes = answer.nodes.len(),
        failed,
        purged = answer.purged,
        "cache purge"
    );
    Ok(Json(answer))
}
