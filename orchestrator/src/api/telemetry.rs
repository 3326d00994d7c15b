//! `GET /v1/telemetry/route-samples`: what nodes' proxies sampled of their attempts (each
//! chosen backend's routing features and how the attempt went), as rows to train a routing
//! model on: `edgectl telemetry export` writes them as the training CSV. `node` (name or
//! id), `since` (milliseconds since the Unix epoch, on the nodes' clocks) and `limit` (rows,
//! 1 to 1,000,000; default 100,000).

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::get;
use orchestrator_core::events::{MAX_ROUTE_ROWS, RouteRows};
use std::collections::BTreeMap;

use super::ApiState;
use super::error::{ApiError, internal};
use super::events::{node_id_of, since_ms};
use super::extract::{Authed, Viewer};

/// Rows one answer holds unless the query says otherwise.
const DEFAULT_ROWS: usize = 100_000;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new().route("/v1/telemetry/route-samples", get(route_samples))
}

#[derive(Debug, PartialEq)]
struct RowQuery {
    node: Option<String>,
    since_ms: u64,
    limit: usize,
}

fn parse_query(query: &BTreeMap<String, String>) -> Result<RowQuery, ApiError> {
    let mut parsed = RowQuery {
        node: None,
        since_ms: 0,
        limit: DEFAULT_ROWS,
    };
    for (key, value) in query {
        match key.as_str() {
            "node" => parsed.node = Some(value.clone()),
            "since" => parsed.since_ms = since_ms("since", value)?,
            "limit" => {
                parsed.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_ROUTE_ROWS).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit: {} is not a number from 1 to {MAX_ROUTE_ROWS}",
                            edge_proto::field::shown(value)
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{}: unknown query parameter; use node, since or limit",
                    edge_proto::field::shown(other)
                )));
            }
        }
    }
    Ok(parsed)
}

async fn route_samples(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RouteRows>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let query = parse_query(&query)?;
    let node_id = node_id_of(&state, query.node.as_deref())?;
    let registry = state.registry.clone();
    let rows = tokio::task::spawn_blocking(move || {
        registry
            .route_samples(node_id.as_deref())
            .map(|stored| RouteRows::select(stored, query.since_ms, query.limit))
    })
    .await
    .map_err(|e| internal(&e))?
    .map_err(|e| internal(&e))?;
    Ok(Json(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_query_names_a_node_a_time_and_a_row_limit() {
        assert_eq!(
            parse_query(&query(&[])).expect("ok"),
            RowQuery {
                node: None,
                since_ms: 0,
                limit: DEFAULT_ROWS
            }
        );
        let q = parse_query(&query(&[
            ("node", "shop-1"),
            ("since", "1765000000000"),
            ("limit", "1000000"),
        ]))
        .expect("ok");
        assert_eq!(
            (q.node.as_deref(), q.since_ms, q.limit),
            (Some("shop-1"), 1_765_000_000_000, MAX_ROUTE_ROWS)
        );
        for (pairs, starts) in [
            (&[("since", "yesterday")][..], "since:"),
            (&[("since", "-1")][..], "since:"),
            (&[("limit", "0")][..], "limit:"),
            (&[("limit", "1000001")][..], "limit:"),
            (&[("limit", "99999999999999999999999")][..], "limit:"),
            (&[("format", "csv")][..], "\"format\": unknown"),
        ] {
            match parse_query(&query(pairs)) {
                Err(ApiError::BadRequest(message)) => {
                    assert!(message.starts_with(starts), "{pairs:?}: {message}")
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
