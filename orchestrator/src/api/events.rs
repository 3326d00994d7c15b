//! `GET /v1/events`: what nodes' outboxes reported, oldest first, with the time each thing
//! happened on its node (however late it arrived), and what the orchestrator decided about a
//! node's instances (`origin: "orchestrator"`: `replaced`, `reconciled`), on its own clock.
//! `node` (name or id), `since` (milliseconds since the Unix epoch) and `limit` (1 to
//! 1,000); `received_since` (milliseconds, the orchestrator's clock) lists what arrived from
//! then on, in the order it arrived, which is how `edgectl events --follow` polls.

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::get;
use orchestrator_core::events::{EventRecord, MAX_QUERY, Origin, What, select, select_arrived};
use serde::Serialize;
use std::collections::BTreeMap;

use super::ApiState;
use super::error::{ApiError, internal};
use super::extract::{Authed, Viewer};
use super::nodes::no_such_node;
use super::time::rfc3339;

pub(super) fn routes() -> axum::Router<ApiState> {
    axum::Router::new().route("/v1/events", get(list_events))
}

/// One event as the API shows it.
#[derive(Debug, Serialize)]
struct EventView {
    /// The node's name, or its id if it is no longer registered.
    node: String,
    node_id: String,
    /// `node` (its outbox) or `orchestrator`; each numbers its own `seq`.
    origin: Origin,
    seq: u64,
    /// When it happened, on the clock of who made it.
    at: String,
    at_ms: u64,
    /// When the orchestrator received it.
    received: String,
    received_ms: u64,
    #[serde(flatten)]
    what: What,
}

/// What `GET /v1/events` asks for.
#[derive(Debug, Default)]
struct EventQuery {
    node: Option<String>,
    since_ms: u64,
    received_since_ms: Option<u64>,
    limit: usize,
}

fn parse_query(query: &BTreeMap<String, String>) -> Result<EventQuery, ApiError> {
    let mut parsed = EventQuery {
        limit: MAX_QUERY,
        ..EventQuery::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "node" => parsed.node = Some(value.clone()),
            "since" => parsed.since_ms = since_ms("since", value)?,
            "received_since" => parsed.received_since_ms = Some(since_ms("received_since", value)?),
            "limit" => parsed.limit = limit(value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{}: unknown query parameter; use node, since, received_since or limit",
                    edge_proto::field::shown(other)
                )));
            }
        }
    }
    Ok(parsed)
}

/// The largest `since` the API takes: what a JSON number holds exactly.
const MAX_SINCE_MS: u64 = (1 << 53) - 1;

/// A query's `limit`: 1 to [`MAX_QUERY`].
pub(super) fn limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_QUERY).contains(n))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "limit: {} is not a number from 1 to {MAX_QUERY}",
                edge_proto::field::shown(value)
            ))
        })
}

pub(super) fn since_ms(name: &str, value: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms <= MAX_SINCE_MS)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name}: {} is not a time in milliseconds since the Unix epoch",
                edge_proto::field::shown(value)
            ))
        })
}

async fn list_events(
    _: Authed<Viewer>,
    State(state): State<ApiState>,
    query: Result<Query<BTreeMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let query = parse_query(&query)?;
    let node_id = node_id_of(&state, query.node.as_deref())?;
    let registry = state.registry.clone();
    let stored = tokio::task::spawn_blocking(move || registry.events(node_id.as_deref()))
        .await
        .map_err(|e| internal(&e))?
        .map_err(|e| internal(&e))?;
    let events = match query.received_since_ms {
        Some(received) => select_arrived(stored, received, query.since_ms, query.limit),
        None => select(stored, query.since_ms, query.limit),
    };
    let fleet = state.registry.fleet();
    let names: BTreeMap<String, String> = fleet
        .nodes()
        .map(|n| (n.id.to_string(), n.name.clone()))
        .collect();
    Ok(Json(events.into_iter().map(|e| view(e, &names)).collect()))
}

/// The id (hex) of the node a query names by name or id; `None` when it names none, 404 when
/// no such node is registered.
pub(super) fn node_id_of(
    state: &ApiState,
    name_or_id: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(name_or_id) = name_or_id else {
        return Ok(None);
    };
    let fleet = state.registry.fleet();
    let node = fleet
        .find(name_or_id)
        .ok_or_else(|| no_such_node(name_or_id))?;
    Ok(Some(node.id.to_string()))
}

fn view(e: EventRecord, names: &BTreeMap<String, String>) -> EventView {
    EventView {
        node: names
            .get(&e.node)
            .cloned()
            .unwrap_or_else(|| e.node.clone()),
        node_id: e.node,
        origin: e.origin,
        seq: e.seq,
        at: rfc3339(e.at_ms / 1000),
        at_ms: e.at_ms,
        received: rfc3339(e.received_ms / 1000),
        received_ms: e.received_ms,
        what: e.what,
    }
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
    fn a_query_names_a_node_a_time_and_a_limit() {
        let q = parse_query(&query(&[("since", "1765000000000")])).expect("ok");
        assert_eq!(q.since_ms, 1_765_000_000_000);
        let q = parse_query(&query(&[("node", "shop-1"), ("limit", "5")])).expect("ok");
        assert_eq!((q.node.as_deref(), q.limit), (Some("shop-1"), 5));
        assert_eq!(parse_query(&query(&[])).expect("ok").limit, MAX_QUERY);
        let q = parse_query(&query(&[("received_since", "1765000000000")])).expect("ok");
        assert_eq!(q.received_since_ms, Some(1_765_000_000_000));
        assert_eq!(
            parse_query(&query(&[("since", "9007199254740991")]))
                .expect("the largest")
                .since_ms,
            MAX_SINCE_MS
        );
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for (pairs, starts) in [
            (&[("since", "yesterday")][..], "since:"),
            (&[("since", "")][..], "since:"),
            (&[("since", "-1")][..], "since:"),
            (&[("since", "9007199254740992")][..], "since:"),
            (&[("since", "99999999999999999999999")][..], "since:"),
            (&[("limit", "0")][..], "limit:"),
            (&[("limit", "1001")][..], "limit:"),
            (&[("limit", "-1")][..], "limit:"),
            (&[("nodes", "x")][..], "\"nodes\": unknown"),
            (&[("received_since", "now")][..], "received_since:"),
            (&[("received_since", "-5")][..], "received_since:"),
        ] {
            match parse_query(&query(pairs)) {
                Err(ApiError::BadRequest(message)) => {
                    assert!(message.starts_with(starts), "{pairs:?}: {message}");
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
